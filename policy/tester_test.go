package policy_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/moat-mqtt/moat/policy"
)

// The example policies' own Rego tests pass with moat's built-ins.
func TestExamplePolicies(t *testing.T) {
	for _, dir := range []string{"../policies/plant", "../policies/multitenant", "../policies/quickstart"} {
		var out bytes.Buffer
		sum, err := policy.RunTests(context.Background(), []string{dir}, &out, testing.Verbose())
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if !sum.OK() {
			t.Errorf("%s: %+v\n%s", dir, sum, out.String())
		}
		if testing.Verbose() {
			t.Log(out.String())
		}
	}
}
