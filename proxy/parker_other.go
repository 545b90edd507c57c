//go:build !linux

package proxy

import (
	"errors"
	"sync/atomic"
	"time"
)

// parker is Linux-only (epoll); elsewhere idle pumps park in a goroutine.
type parker struct{}

var errUnparked = errors.New("unparked")

func newParker() (*parker, error) { return nil, nil }

func (p *parker) park(*waitConn, *atomic.Uint64, time.Time, func(error)) error {
	return errors.New("no parker on this platform")
}
func (p *parker) unpark(*atomic.Uint64) {}
func (p *parker) close()                {}
