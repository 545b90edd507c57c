package policy

import (
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// InputVersion is the "version" field of every input document. It changes
// only when a field changes meaning or goes away.
const InputVersion = 1

// Action is what a decision is about.
type Action uint8

const (
	Connect Action = iota + 1
	Publish
	Subscribe
	Unsubscribe
	Receive
	numActions
)

// Actions are every action, in order.
var Actions = []Action{Connect, Publish, Subscribe, Unsubscribe, Receive}

var actionNames = [...]string{Connect: "connect", Publish: "publish", Subscribe: "subscribe", Unsubscribe: "unsubscribe", Receive: "receive"}

func (a Action) String() string {
	if int(a) < len(actionNames) && actionNames[a] != "" {
		return actionNames[a]
	}
	return "unknown"
}

// ParseAction is the inverse of Action.String.
func ParseAction(s string) (Action, bool) {
	for a, n := range actionNames {
		if n != "" && n == s {
			return Action(a), true
		}
	}
	return 0, false
}

// Client is what the policy knows of the connection. Every field comes from
// a verified source: the socket, the TLS state, a checked password or a
// verified token. ID is the client's own claim; policies bind it to one of
// the verified fields rather than trust it.
type Client struct {
	ID              string
	Username        string // empty unless a password or token vouched for it
	ProtocolVersion int    // 3 (MQTT 3.1), 4 (3.1.1) or 5
	CleanStart      bool
	KeepAlive       uint16
	Address         string
	Port            int
	Listener        string
	Transport       string // tcp, tls, ws, wss
	AuthMethod      string // anonymous, password, jwt, certificate
	Claims          map[string]any
	Cert            *Cert // the verified client certificate, if any
}

// Cert holds the facts of a verified client certificate.
type Cert struct {
	Subject           Name
	Issuer            Name
	DNSNames          []string
	URISANs           []string
	Serial            string
	FingerprintSHA256 string
}

// Name is a certificate subject or issuer.
type Name struct {
	CommonName         string
	Organization       []string
	OrganizationalUnit []string
	Country            []string
	Province           []string
	Locality           []string
}

// CertOf extracts the policy facts of a certificate.
func CertOf(c *x509.Certificate) *Cert {
	sum := sha256.Sum256(c.Raw)
	out := &Cert{
		Subject:           nameOf(c.Subject),
		Issuer:            nameOf(c.Issuer),
		DNSNames:          c.DNSNames,
		Serial:            c.SerialNumber.Text(16),
		FingerprintSHA256: hex.EncodeToString(sum[:]),
	}
	for _, u := range c.URIs {
		out.URISANs = append(out.URISANs, u.String())
	}
	return out
}

func nameOf(n pkix.Name) Name {
	return Name{CommonName: n.CommonName, Organization: n.Organization, OrganizationalUnit: n.OrganizationalUnit,
		Country: n.Country, Province: n.Province, Locality: n.Locality}
}

// Request is one decision's subject matter. Its strings may alias buffers
// the caller reuses once Decide returns: Decide copies what it keeps.
type Request struct {
	Action     Action
	Topic      string // a topic name, or a filter for subscribe/unsubscribe; aliases resolved
	Shared     bool   // a $share subscription: Topic is the inner filter
	ShareGroup string
	QoS        byte
	Retain     bool
	Will       bool
	Props      *Props // MQTT 5 properties the policy may look at; nil if none
	// At is when the packet was read, if the caller has read the clock
	// already (with its monotonic reading); zero: Decide reads it.
	At time.Time
}

// Props are the MQTT 5 PUBLISH properties in the input.
type Props struct {
	ContentType   string
	ResponseTopic string
	User          [][2]string
}

// Subject is a connection as the policy sees it. The client document is
// built on the first cache miss and kept while the connection is busy;
// Release drops it when the connection goes quiet, so an idle connection
// holds a few hundred bytes rather than a document.
type Subject struct {
	ConnID uint64
	Client Client
	serial uint64 // the cache key's client part: unique per Subject
	term   atomic.Pointer[ast.Term]
	fast   atomic.Pointer[fastSet]
}

// Release drops the client document and the specialised rules until the
// next cache miss.
func (s *Subject) Release() {
	s.term.Store(nil)
	s.fast.Store(nil)
}

// client returns the client document, building it if needed.
func (s *Subject) client() *ast.Term {
	if t := s.term.Load(); t != nil {
		return t
	}
	t := s.clientTerm()
	s.term.Store(t)
	return t
}

var subjects atomic.Uint64

// NewSubject describes a connection to the policy.
func NewSubject(connID uint64, c Client) *Subject {
	return &Subject{ConnID: connID, Client: c, serial: subjects.Add(1)}
}

// str is a string term; the empty string is a shared one.
func str(s string) *ast.Term {
	if s == "" {
		return ast.InternedEmptyString
	}
	return ast.StringTerm(s)
}

// clientTerm builds input.client: once per connection, on its first
// decision, so on every connection of a storm. Keys, empty strings and
// lists and small numbers are shared terms (OPA never changes an input).
func (s *Subject) clientTerm() *ast.Term {
	c := &s.Client
	claims := vObject
	if c.Claims != nil {
		if v, err := ast.InterfaceToValue(c.Claims); err == nil {
			claims = ast.NewTerm(v)
		}
	}
	items := make([][2]*ast.Term, 0, 12)
	items = append(items,
		[2]*ast.Term{kID, str(c.ID)},
		[2]*ast.Term{kUsername, str(c.Username)},
		[2]*ast.Term{kProtocolVersion, ast.InternedTerm(c.ProtocolVersion)},
		[2]*ast.Term{kCleanStart, boolTerm(c.CleanStart)},
		[2]*ast.Term{kKeepAlive, ast.InternedTerm(int(c.KeepAlive))},
		[2]*ast.Term{kAddress, str(c.Address)},
		[2]*ast.Term{kPort, ast.InternedTerm(c.Port)},
		[2]*ast.Term{kListener, str(c.Listener)},
		[2]*ast.Term{kTransport, str(c.Transport)},
		[2]*ast.Term{kAuthMethod, str(c.AuthMethod)},
		[2]*ast.Term{kClaims, claims},
	)
	if ct := c.Cert; ct != nil {
		items = append(items, [2]*ast.Term{kCert, ast.ObjectTerm(
			[2]*ast.Term{kSubject, nameTerm(ct.Subject)},
			[2]*ast.Term{kIssuer, nameTerm(ct.Issuer)},
			[2]*ast.Term{kDNSNames, strs(ct.DNSNames)},
			[2]*ast.Term{kURISANs, strs(ct.URISANs)},
			[2]*ast.Term{kSerial, str(ct.Serial)},
			[2]*ast.Term{kFingerprint, str(ct.FingerprintSHA256)},
		)})
	}
	return ast.ObjectTerm(items...)
}

func nameTerm(n Name) *ast.Term {
	return ast.ObjectTerm(
		[2]*ast.Term{kCommonName, str(n.CommonName)},
		[2]*ast.Term{kOrganization, strs(n.Organization)},
		[2]*ast.Term{kOrgUnit, strs(n.OrganizationalUnit)},
		[2]*ast.Term{kCountry, strs(n.Country)},
		[2]*ast.Term{kProvince, strs(n.Province)},
		[2]*ast.Term{kLocality, strs(n.Locality)},
	)
}

// strs keeps absent lists as [] so rules can iterate without a guard.
func strs(s []string) *ast.Term {
	if len(s) == 0 {
		return vArray
	}
	out := make([]*ast.Term, len(s))
	for i, v := range s {
		out[i] = str(v)
	}
	return ast.ArrayTerm(out...)
}

// The client document's keys.
var (
	kID, kUsername, kProtocolVersion  = ast.StringTerm("id"), ast.StringTerm("username"), ast.StringTerm("protocol_version")
	kCleanStart, kKeepAlive, kAddress = ast.StringTerm("clean_start"), ast.StringTerm("keep_alive"), ast.StringTerm("address")
	kPort, kListener, kTransport      = ast.StringTerm("port"), ast.StringTerm("listener"), ast.StringTerm("transport")
	kAuthMethod, kClaims, kCert       = ast.StringTerm("auth_method"), ast.StringTerm("claims"), ast.StringTerm("cert")
	kSubject, kIssuer, kDNSNames      = ast.StringTerm("subject"), ast.StringTerm("issuer"), ast.StringTerm("dns_names")
	kURISANs, kSerial, kFingerprint   = ast.StringTerm("uri_sans"), ast.StringTerm("serial"), ast.StringTerm("fingerprint_sha256")
	kCommonName, kOrganization        = ast.StringTerm("common_name"), ast.StringTerm("organization")
	kOrgUnit, kCountry                = ast.StringTerm("organizational_unit"), ast.StringTerm("country")
	kProvince, kLocality              = ast.StringTerm("province"), ast.StringTerm("locality")
)

// Terms every input shares, built once: keys, actions, small numbers.
var (
	kVersion, kAction, kClient    = ast.StringTerm("version"), ast.StringTerm("action"), ast.StringTerm("client")
	kTopic, kLevels, kGroup, kQoS = ast.StringTerm("topic"), ast.StringTerm("topic_levels"), ast.StringTerm("share_group"), ast.StringTerm("qos")
	kRetain, kWill, kProps        = ast.StringTerm("retain"), ast.StringTerm("will"), ast.StringTerm("properties")
	vVersion                      = ast.IntNumberTerm(InputVersion)
	vQoS                          = [3]*ast.Term{ast.IntNumberTerm(0), ast.IntNumberTerm(1), ast.IntNumberTerm(2)}
	vActions                      [len(actionNames)]*ast.Term
)

func init() {
	for a, n := range actionNames {
		vActions[a] = ast.StringTerm(n)
	}
}

// Terms shared by every input: OPA never changes an input document, and
// interns these itself.
var (
	vNull   = ast.InternedNullTerm
	vTrue   = ast.InternedTerm(true)
	vFalse  = ast.InternedTerm(false)
	vObject = ast.InternedEmptyObject // {}: no properties, no claims
	vArray  = ast.InternedEmptyArray  // []: no topic levels, an absent list
)

func boolTerm(b bool) *ast.Term {
	if b {
		return vTrue
	}
	return vFalse
}

// inputUse says which costly parts of the input document the policy can
// read. A part no rule mentions is left empty: it cannot change a decision,
// and building it is a good share of an evaluation's allocations.
type inputUse struct {
	levels bool // input.topic_levels
	props  bool // input.properties
}

var allInput = inputUse{levels: true, props: true}

// inputUseOf finds the input fields the compiled modules refer to. A use
// of input it cannot pin to a field (input as a whole, input[x]) means
// every field.
func inputUseOf(c *ast.Compiler) inputUse {
	var u inputUse
	all := false
	var vis *ast.GenericVisitor
	vis = ast.NewGenericVisitor(func(x any) bool {
		t, ok := x.(*ast.Term)
		if !ok {
			return all
		}
		switch v := t.Value.(type) {
		case ast.Var:
			if v.Equal(ast.InputRootDocument.Value) {
				all = true
			}
		case ast.Ref:
			if !v[0].Equal(ast.InputRootDocument) {
				return all
			}
			key, ok := ast.String(""), false
			if len(v) > 1 {
				key, ok = v[1].Value.(ast.String)
			}
			switch {
			case !ok:
				all = true
			case key == "topic_levels":
				u.levels = true
			case key == "properties":
				u.props = true
			}
			for _, el := range v[1:] {
				vis.Walk(el) // index terms may refer to input too
			}
			return true
		}
		return all
	})
	for _, m := range c.Modules {
		vis.Walk(m)
	}
	if all {
		return allInput
	}
	return u
}

// input builds the input document of one decision, with the parts use
// names.
func (s *Subject) input(r *Request, use inputUse) ast.Value {
	action := ast.StringTerm("unknown")
	if int(r.Action) < len(vActions) && vActions[r.Action] != nil {
		action = vActions[r.Action]
	}
	if r.Action == Connect {
		return ast.NewObject([2]*ast.Term{kVersion, vVersion}, [2]*ast.Term{kAction, action}, [2]*ast.Term{kClient, s.client()})
	}
	levels := vArray
	if use.levels {
		lv := make([]*ast.Term, 0, strings.Count(r.Topic, "/")+1)
		for l := range strings.SplitSeq(r.Topic, "/") {
			lv = append(lv, ast.StringTerm(l))
		}
		levels = ast.ArrayTerm(lv...)
	}
	group := vNull
	if r.Shared {
		group = ast.StringTerm(r.ShareGroup)
	}
	props := vObject
	if p := r.Props; p != nil && use.props {
		user := make([]*ast.Term, len(p.User))
		for i, kv := range p.User {
			user[i] = ast.ArrayTerm(ast.StringTerm(kv[0]), ast.StringTerm(kv[1]))
		}
		props = ast.ObjectTerm(
			ast.Item(ast.StringTerm("content_type"), ast.StringTerm(p.ContentType)),
			ast.Item(ast.StringTerm("response_topic"), ast.StringTerm(p.ResponseTopic)),
			ast.Item(ast.StringTerm("user"), ast.ArrayTerm(user...)),
		)
	}
	qos := vQoS[r.QoS&3%3]
	return ast.NewObject(
		[2]*ast.Term{kVersion, vVersion},
		[2]*ast.Term{kAction, action},
		[2]*ast.Term{kClient, s.client()},
		[2]*ast.Term{kTopic, ast.StringTerm(r.Topic)},
		[2]*ast.Term{kLevels, levels},
		[2]*ast.Term{kGroup, group},
		[2]*ast.Term{kQoS, qos},
		[2]*ast.Term{kRetain, boolTerm(r.Retain)},
		[2]*ast.Term{kWill, boolTerm(r.Will)},
		[2]*ast.Term{kProps, props},
	)
}

// propsKey is the cache key part for the properties: empty for none.
func propsKey(p *Props) string {
	if p == nil {
		return ""
	}
	b, _ := json.Marshal([]any{p.ContentType, p.ResponseTopic, p.User})
	return string(b)
}
