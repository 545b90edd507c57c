//go:build !linux

package proxy

import "syscall"

// rawRead and rawWrite go through the scheduler-aware calls where moat has
// not measured the raw ones (rawio_linux.go says why Linux differs).
func rawRead(fd int, p []byte) (int, syscall.Errno)  { return errno(syscall.Read(fd, p)) }
func rawWrite(fd int, p []byte) (int, syscall.Errno) { return errno(syscall.Write(fd, p)) }

func errno(n int, err error) (int, syscall.Errno) {
	if err == nil {
		return n, 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return 0, e
	}
	return 0, syscall.EIO
}
