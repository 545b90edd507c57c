package proxy

import (
	"container/heap"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// parker holds idle pumps without goroutines. A pump with nothing to read
// registers its socket (one-shot, level-triggered) with one epoll instance
// and its goroutine exits; when the socket becomes readable, its deadline
// passes or the session is told to stop, a fresh goroutine resumes the pump.
// So an idle connection costs its buffers-free state and no stacks.
type parker struct {
	epfd   int
	ep     *os.File        // epfd, registered with Go's netpoller
	epRaw  syscall.RawConn // waits for epfd's readiness in the netpoller
	wakeR  int             // pipe read end, registered under wakeID: closing the parker
	wakeW  int
	mu     sync.Mutex
	parked map[uint64]*parkEntry
	next   uint64
	done   chan struct{}
	closed bool
	// Deadlines of parked pumps, earliest first, and one timer for the
	// earliest: a timer per parked pump cost about 140 bytes each.
	due   deadlines
	timer *time.Timer
}

type parkEntry struct {
	resume func(error)
	id     uint64
	at     mono // deadline, when in due
	idx    int  // index in due; -1 when not there
}

// deadlines is a min-heap of parked entries by deadline.
type deadlines []*parkEntry

func (d deadlines) Len() int           { return len(d) }
func (d deadlines) Less(i, j int) bool { return d[i].at < d[j].at }
func (d deadlines) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].idx, d[j].idx = i, j
}
func (d *deadlines) Push(x any) {
	e := x.(*parkEntry)
	e.idx = len(*d)
	*d = append(*d, e)
}
func (d *deadlines) Pop() any {
	old := *d
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*d = old[:len(old)-1]
	e.idx = -1
	return e
}

// errUnparked resumes a pump that was woken by the session (end, drain),
// not by its socket: the pump looks at the session's state.
var errUnparked = errors.New("unparked")

const wakeID = 0 // parked ids start at 1

func newParker() (*parker, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &parker{epfd: epfd, wakeR: fds[0], wakeW: fds[1], parked: map[uint64]*parkEntry{}, next: wakeID + 1, done: make(chan struct{})}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setID(&ev, wakeID)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.wakeR, &ev); err != nil {
		p.closeFDs()
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// The loop waits for the epoll instance itself to become readable in
	// Go's netpoller, not in a blocking epoll_wait: a goroutine blocked in
	// a system call keeps its P in the syscall state, so every wake-up of
	// the loop took a P from the pumps until sysmon handed it back, and
	// woke sysmon from its sleep on the way in.
	if err := syscall.SetNonblock(epfd, true); err != nil {
		p.closeFDs()
		return nil, os.NewSyscallError("fcntl", err)
	}
	p.ep = os.NewFile(uintptr(epfd), "parker-epoll")
	raw, err := p.ep.SyscallConn()
	if err != nil {
		p.closeFDs()
		return nil, err
	}
	p.epRaw = raw
	go p.loop()
	return p, nil
}

// The 8 bytes of epoll user data carry a parked id (Go's EpollEvent
// splits them in two int32 fields).
func setID(ev *syscall.EpollEvent, id uint64) {
	*(*uint64)(unsafe.Pointer(&ev.Fd)) = id
}

func getID(ev *syscall.EpollEvent) uint64 {
	return *(*uint64)(unsafe.Pointer(&ev.Fd))
}

// park registers wc's socket and records the id in slot. On success the
// caller's goroutine must return: resume will be called exactly once, on a
// new goroutine, with nil (readable), os.ErrDeadlineExceeded (deadline,
// when not zero) or errUnparked (unpark). The lock is held across the
// registration so nothing can fire the entry while this goroutine still
// touches the connection.
func (p *parker) park(wc *waitConn, slot *atomic.Uint64, deadline time.Time, resume func(error)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return net.ErrClosed
	}
	id := p.next
	p.next++
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	setID(&ev, id)
	var cerr error
	err := wc.raw.Control(func(fd uintptr) {
		op := syscall.EPOLL_CTL_MOD
		if !wc.inEpoll {
			op = syscall.EPOLL_CTL_ADD
		}
		cerr = epollCtl(p.epfd, op, int(fd), &ev)
		if cerr == syscall.ENOENT && op == syscall.EPOLL_CTL_MOD {
			cerr = epollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
		if cerr == nil {
			wc.inEpoll = true
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	e := &parkEntry{resume: resume, id: id, idx: -1}
	p.parked[id] = e
	slot.Store(id)
	if !deadline.IsZero() {
		e.at = monoOf(deadline)
		heap.Push(&p.due, e)
		if e.idx == 0 {
			p.armLocked() // the new earliest
		}
	}
	return nil
}

// armLocked sets the timer for the earliest deadline. A deadline taken out
// early leaves the timer where it was: the early call finds nothing due and
// arms it again.
func (p *parker) armLocked() {
	if len(p.due) == 0 {
		return
	}
	d := time.Duration(p.due[0].at - monoNow())
	if p.timer == nil {
		p.timer = time.AfterFunc(d, p.expire)
		return
	}
	p.timer.Reset(d)
}

// expire resumes every pump whose deadline has passed.
func (p *parker) expire() {
	p.mu.Lock()
	now := monoNow()
	var ids []uint64
	for len(p.due) > 0 && p.due[0].at <= now {
		ids = append(ids, heap.Pop(&p.due).(*parkEntry).id)
	}
	p.armLocked()
	p.mu.Unlock()
	for _, id := range ids {
		p.fire(id, os.ErrDeadlineExceeded)
	}
}

// take removes a parked entry; nil if it was already fired or taken.
func (p *parker) take(id uint64) *parkEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.parked[id]
	if !ok {
		return nil
	}
	delete(p.parked, id)
	if e.idx >= 0 {
		heap.Remove(&p.due, e.idx)
	}
	return e
}

// fire resumes a parked pump, once.
func (p *parker) fire(id uint64, err error) {
	if e := p.take(id); e != nil {
		go e.resume(err)
	}
}

// unpark resumes the pump parked under the id in slot, if it still is.
func (p *parker) unpark(slot *atomic.Uint64) {
	if id := slot.Load(); id != 0 {
		p.fire(id, errUnparked)
	}
}

func (p *parker) loop() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 128)
	var n int
	var werr error
	// Non-blocking epoll_wait; an empty answer waits in the netpoller for
	// epfd to become readable. Calling it first after every wake-up keeps
	// an event that arrived in between from being missed.
	collect := func(fd uintptr) bool {
		n, werr = epollWaitNow(int(fd), events)
		for werr == syscall.EINTR {
			n, werr = epollWaitNow(int(fd), events)
		}
		return n > 0 || werr != nil
	}
	for {
		if err := p.epRaw.Read(collect); err != nil {
			return
		}
		if werr != nil {
			return
		}
		for i := 0; i < n; i++ {
			id := getID(&events[i])
			if id == wakeID {
				return
			}
			p.fire(id, nil)
		}
	}
}

// close stops the loop and resumes every parked pump (they find their
// sessions ending).
func (p *parker) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
	}
	ids := make([]uint64, 0, len(p.parked))
	for id := range p.parked {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		p.fire(id, errUnparked)
	}
	syscall.Write(p.wakeW, []byte{1})
	<-p.done
	p.closeFDs()
}

func (p *parker) closeFDs() {
	syscall.Close(p.wakeR)
	syscall.Close(p.wakeW)
	if p.ep != nil {
		p.ep.Close() // closes epfd, after taking it out of the netpoller
		return
	}
	syscall.Close(p.epfd)
}

// epollCtl is epoll_ctl, which never blocks either: made without telling
// the scheduler, it cannot have its P handed to another thread by sysmon
// when the host makes it slow. It returns a nil error or the errno.
func epollCtl(epfd, op, fd int, ev *syscall.EpollEvent) error {
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// epollWaitNow is epoll_wait with a zero timeout. It never blocks, so it
// is made without telling the scheduler (see rawRead).
func epollWaitNow(epfd int, events []syscall.EpollEvent) (int, error) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
