package device

import (
	"fmt"
	"sync"
	"syscall"
	"time"
)

// Faulty wraps a Device and injects faults on demand, for tests of the
// failure paths: errors, delays and hangs, on writes or on everything.
type Faulty struct {
	Device
	mu        sync.Mutex
	failAll   error
	failWrite error
	delay     time.Duration
	hang      chan struct{}
}

// NewFaulty wraps d with no fault active.
func NewFaulty(d Device) *Faulty { return &Faulty{Device: d} }

// FailAll makes every request fail with err (nil heals).
func (f *Faulty) FailAll(err error) { f.mu.Lock(); f.failAll = err; f.mu.Unlock() }

// FailWrites makes modifying requests fail with err (nil heals).
func (f *Faulty) FailWrites(err error) { f.mu.Lock(); f.failWrite = err; f.mu.Unlock() }

// Delay adds d before every request.
func (f *Faulty) Delay(d time.Duration) { f.mu.Lock(); f.delay = d; f.mu.Unlock() }

// Hang blocks every request until Release.
func (f *Faulty) Hang() { f.mu.Lock(); f.hang = make(chan struct{}); f.mu.Unlock() }

// Release ends a Hang.
func (f *Faulty) Release() {
	f.mu.Lock()
	if f.hang != nil {
		close(f.hang)
		f.hang = nil
	}
	f.mu.Unlock()
}

// ErrInjected is the default injected error.
var ErrInjected = fmt.Errorf("injected fault: %w", syscall.EIO)

func (f *Faulty) before(write bool) error {
	f.mu.Lock()
	all, w, d, h := f.failAll, f.failWrite, f.delay, f.hang
	f.mu.Unlock()
	if h != nil {
		<-h
	}
	if d > 0 {
		time.Sleep(d)
	}
	if all != nil {
		return all
	}
	if write && w != nil {
		return w
	}
	return nil
}

// ReadAt implements Device.
func (f *Faulty) ReadAt(p []byte, off int64) error {
	if err := f.before(false); err != nil {
		return err
	}
	return f.Device.ReadAt(p, off)
}

// WriteAt implements Device.
func (f *Faulty) WriteAt(p []byte, off int64, fua bool) error {
	if err := f.before(true); err != nil {
		return err
	}
	return f.Device.WriteAt(p, off, fua)
}

// Flush implements Device.
func (f *Faulty) Flush() error {
	if err := f.before(true); err != nil {
		return err
	}
	return f.Device.Flush()
}

// Trim implements Device.
func (f *Faulty) Trim(off, n int64) error {
	if err := f.before(true); err != nil {
		return err
	}
	return f.Device.Trim(off, n)
}

// WriteZeroes implements Device.
func (f *Faulty) WriteZeroes(off, n int64, fl ZeroFlags) error {
	if err := f.before(true); err != nil {
		return err
	}
	return f.Device.WriteZeroes(off, n, fl)
}

// Extents implements Device.
func (f *Faulty) Extents(off, n int64) ([]Extent, error) {
	if err := f.before(false); err != nil {
		return nil, err
	}
	return f.Device.Extents(off, n)
}

// Close implements Device: a closed Faulty releases hung requests.
func (f *Faulty) Close() error {
	f.Release()
	return nil
}
