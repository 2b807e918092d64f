package tunnel

import (
	"container/list"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// failureLimiter limits failed agent authentications per key (remote IP and cluster): each
// failure takes a token from the key's bucket; a key with an empty bucket is answered 429 instead
// of 401. The token is always checked first (in constant time), so a valid agent is admitted even
// while its key's bucket is empty: a flood of wrong tokens from the same address (a SNAT gateway)
// cannot lock it out. Successful attempts cost nothing.
//
// Memory is bounded: at most capacity buckets are kept, in least-recently-used order; a new key
// evicts the oldest one in O(1).
type failureLimiter struct {
	mu       sync.Mutex
	r        rate.Limit
	burst    int
	capacity int
	keys     map[string]*list.Element
	lru      list.List // of *limiterEntry, most recently used first
}

type limiterEntry struct {
	key string
	l   *rate.Limiter
}

func newFailureLimiter(r rate.Limit, burst, capacity int) *failureLimiter {
	f := &failureLimiter{r: r, burst: burst, capacity: capacity, keys: make(map[string]*list.Element, min(capacity, 1024))}
	f.lru.Init()
	return f
}

// fail records a failure of key and reports whether it was within the key's budget (false: the
// bucket was already empty).
func (f *failureLimiter) fail(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	e := f.keys[key]
	if e != nil {
		f.lru.MoveToFront(e)
		return e.Value.(*limiterEntry).l.AllowN(now, 1)
	}
	var ent *limiterEntry
	if f.lru.Len() >= f.capacity {
		// Recycle the least recently used bucket.
		e = f.lru.Back()
		ent = e.Value.(*limiterEntry)
		delete(f.keys, ent.key)
		ent.key = key
		ent.l = rate.NewLimiter(f.r, f.burst)
		f.lru.MoveToFront(e)
	} else {
		ent = &limiterEntry{key: key, l: rate.NewLimiter(f.r, f.burst)}
		e = f.lru.PushFront(ent)
	}
	f.keys[key] = e
	return ent.l.AllowN(now, 1)
}

// len is the number of buckets held.
func (f *failureLimiter) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lru.Len()
}
