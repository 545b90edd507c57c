package policy

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/open-policy-agent/opa/v1/tester"
)

// TestSummary counts a RunTests run.
type TestSummary struct{ Passed, Failed, Errors, Skipped int }

// OK reports whether every test that ran passed.
func (s TestSummary) OK() bool { return s.Failed == 0 && s.Errors == 0 && s.Passed > 0 }

// RunTests runs the Rego unit tests (rules named test_*) under paths with
// moat's built-ins, writing one line per test that did not pass (every
// test with verbose) and a summary to out.
func RunTests(ctx context.Context, paths []string, out io.Writer, verbose bool) (TestSummary, error) {
	var sum TestSummary
	modules, store, err := tester.Load(paths, nil)
	if err != nil {
		return sum, err
	}
	opts := Builtins()
	builtins := make([]*tester.Builtin, len(builtinDecls))
	for i, d := range builtinASTDecls() {
		builtins[i] = &tester.Builtin{Decl: d, Func: opts[i]}
	}
	ch, err := tester.NewRunner().SetStore(store).AddCustomBuiltins(builtins).
		SetTimeout(10*time.Second).SetParallel(1).CapturePrintOutput(true).RaiseBuiltinErrors(true).SetModules(modules).RunTests(ctx, nil)
	if err != nil {
		return sum, err
	}
	for r := range ch {
		name := fmt.Sprintf("%s.%s", r.Package, r.Name)
		where := ""
		if r.Location != nil {
			where = fmt.Sprintf("%s:%d: ", r.Location.File, r.Location.Row)
		}
		switch {
		case r.Error != nil:
			sum.Errors++
			fmt.Fprintf(out, "ERROR %s%s: %v\n", where, name, r.Error)
		case r.Fail:
			sum.Failed++
			fmt.Fprintf(out, "FAIL  %s%s\n", where, name)
			if len(r.Output) > 0 {
				fmt.Fprintf(out, "      %s", r.Output)
			}
		case r.Skip:
			sum.Skipped++
			if verbose {
				fmt.Fprintf(out, "SKIP  %s\n", name)
			}
		default:
			sum.Passed++
			if verbose {
				fmt.Fprintf(out, "PASS  %s (%s)\n", name, r.Duration.Round(time.Microsecond))
			}
		}
	}
	fmt.Fprintf(out, "%d passed, %d failed, %d errors, %d skipped\n", sum.Passed, sum.Failed, sum.Errors, sum.Skipped)
	return sum, nil
}
