package policy

import (
	"encoding/json"
	"io"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DecisionLog writes one JSON line per denial, and per allow when asked.
// It carries identity and topic, never credentials or payloads. Lines are
// rate limited, so a client hammering a forbidden topic cannot turn the
// log into a disk or I/O flood; what was left out is counted in a
// "suppressed" line once lines flow again.
type DecisionLog struct {
	mu         sync.Mutex
	w          io.Writer
	allows     bool
	limit      *rate.Limiter // nil: every line is written
	suppressed uint64
}

// NewDecisionLog logs to w; allows also logs permitted decisions. At most
// perSecond lines are written per second (with a burst of as many); 0 or
// less means no limit.
func NewDecisionLog(w io.Writer, allows bool, perSecond int) *DecisionLog {
	l := &DecisionLog{w: w, allows: allows}
	if perSecond > 0 {
		l.limit = rate.NewLimiter(rate.Limit(perSecond), perSecond)
	}
	return l
}

type suppressedLine struct {
	Time       string `json:"time"`
	Decision   string `json:"decision"`
	Suppressed uint64 `json:"suppressed"`
}

type decisionLine struct {
	Time       string `json:"time"`
	Conn       uint64 `json:"conn"`
	ClientID   string `json:"client_id"`
	Username   string `json:"username,omitempty"`
	AuthMethod string `json:"auth_method"`
	Address    string `json:"address"`
	Listener   string `json:"listener"`
	Action     string `json:"action"`
	Topic      string `json:"topic,omitempty"`
	ShareGroup string `json:"share_group,omitempty"`
	QoS        *byte  `json:"qos,omitempty"`
	Retain     bool   `json:"retain,omitempty"`
	Will       bool   `json:"will,omitempty"`
	Decision   string `json:"decision"`
	Reason     string `json:"reason,omitempty"`
	Error      string `json:"error,omitempty"`
	Revision   string `json:"revision"`
}

func (l *DecisionLog) write(s *Subject, r *Request, rev, verdict, reason string, err error) {
	l.mu.Lock()
	if l.limit != nil && !l.limit.Allow() {
		// Over the limit: count, without building the line.
		l.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()

	now := time.Now().UTC().Format(time.RFC3339Nano)
	line := decisionLine{
		Time: now, Conn: s.ConnID,
		ClientID: s.Client.ID, Username: s.Client.Username, AuthMethod: s.Client.AuthMethod,
		Address: s.Client.Address, Listener: s.Client.Listener,
		Action: r.Action.String(), Decision: verdict, Reason: reason, Revision: rev,
	}
	if r.Action != Connect {
		q := r.QoS
		line.Topic, line.ShareGroup, line.QoS, line.Retain, line.Will = r.Topic, r.ShareGroup, &q, r.Retain, r.Will
	}
	if err != nil {
		line.Error = err.Error()
	}
	var out []byte
	if suppressed > 0 {
		b, _ := json.Marshal(suppressedLine{Time: now, Decision: "suppressed", Suppressed: suppressed})
		out = append(b, '\n')
	}
	b, jerr := json.Marshal(line)
	if jerr != nil {
		return
	}
	out = append(append(out, b...), '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(out)
}
