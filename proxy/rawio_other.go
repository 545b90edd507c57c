//go:build !linux

package proxy

import "syscall"

// rawRead and rawWrite go through the scheduler-aware calls where moat has
// not measured the raw ones (rawio_linux.go says why Linux differs).
func rawRead(fd int, p []byte) (int, error)  { return syscall.Read(fd, p) }
func rawWrite(fd int, p []byte) (int, error) { return syscall.Write(fd, p) }
