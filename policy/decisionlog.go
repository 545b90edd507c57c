package policy

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// DecisionLog writes one JSON line per denial, and per allow when asked.
// It carries identity and topic, never credentials or payloads.
type DecisionLog struct {
	mu     sync.Mutex
	w      io.Writer
	allows bool
}

// NewDecisionLog logs to w; allows also logs permitted decisions.
func NewDecisionLog(w io.Writer, allows bool) *DecisionLog {
	return &DecisionLog{w: w, allows: allows}
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
	line := decisionLine{
		Time: time.Now().UTC().Format(time.RFC3339Nano), Conn: s.ConnID,
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
	b, jerr := json.Marshal(line)
	if jerr != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(append(b, '\n'))
}
