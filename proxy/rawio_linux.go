package proxy

import (
	"syscall"
	"unsafe"
)

// rawRead and rawWrite are read(2) and write(2) on a non-blocking socket
// without telling the Go scheduler. A call through syscall.Read hands the
// P to the syscall path (entersyscall/exitsyscall), and the first such call
// after the process was idle wakes sysmon from its deep sleep, which then
// polls every 20 µs again; on a busy proxy those wake-ups and the context
// switches they cause cost more than the reads. A non-blocking socket call
// returns at once (EAGAIN when it would block), which is the condition
// under which syscall.RawSyscall is safe.
// They return the bare errno (0: none): the callers compare it with
// EAGAIN on every read, and an integer compare is cheaper than an
// interface one.
func rawRead(fd int, p []byte) (int, syscall.Errno)  { return rawIO(syscall.SYS_READ, fd, p) }
func rawWrite(fd int, p []byte) (int, syscall.Errno) { return rawIO(syscall.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	n, _, e := syscall.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}
