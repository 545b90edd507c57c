package policy

import (
	"fmt"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/types"

	"github.com/moat-mqtt/moat/codec"
)

// The moat.* built-ins. Rules match topics with these instead of string
// functions so MQTT's wildcard and '$' rules hold, and so identities are
// placed into patterns without being able to add wildcards.
var varsType = types.NewObject(nil, types.NewDynamicProperty(types.S, types.S))

var builtinDecls = []*rego.Function{
	{
		Name:        "moat.topic_matches",
		Description: "Reports whether an MQTT topic filter matches a topic name; '#' and '+' in the first level do not match topics starting with '$'.",
		Decl:        types.NewFunction(types.Args(types.Named("filter", types.S), types.Named("topic", types.S)), types.B),
	},
	{
		Name:        "moat.topic_matches_with",
		Description: "Like moat.topic_matches, after replacing {name} in the pattern with vars[name]; a value that is empty or holds '/', '+' or '#' matches nothing.",
		Decl:        types.NewFunction(types.Args(types.Named("pattern", types.S), types.Named("vars", varsType), types.Named("topic", types.S)), types.B),
	},
	{
		Name:        "moat.filter_covers",
		Description: "Reports whether every topic the requested filter can match is matched by the allowed filter.",
		Decl:        types.NewFunction(types.Args(types.Named("allowed", types.S), types.Named("requested", types.S)), types.B),
	},
	{
		Name:        "moat.filter_covers_with",
		Description: "Like moat.filter_covers, after replacing {name} in the allowed pattern with vars[name].",
		Decl:        types.NewFunction(types.Args(types.Named("pattern", types.S), types.Named("vars", varsType), types.Named("requested", types.S)), types.B),
	},
}

// Builtins returns the rego options that add moat's built-ins; the policy
// tester takes the same set.
func Builtins() []func(*rego.Rego) {
	return []func(*rego.Rego){
		rego.Function2(builtinDecls[0], func(_ rego.BuiltinContext, f, t *ast.Term) (*ast.Term, error) {
			filter, topic, err := twoStrings(f, t)
			if err != nil {
				return nil, err
			}
			if err := codec.ValidFilter(filter); err != nil {
				return nil, fmt.Errorf("moat.topic_matches: %v", err)
			}
			return ast.BooleanTerm(codec.TopicMatches(filter, topic)), nil
		}),
		rego.Function3(builtinDecls[1], func(_ rego.BuiltinContext, p, v, t *ast.Term) (*ast.Term, error) {
			filter, ok, topic, err := expandArgs("moat.topic_matches_with", p, v, t)
			if err != nil || !ok {
				return ast.BooleanTerm(false), err
			}
			return ast.BooleanTerm(codec.TopicMatches(filter, topic)), nil
		}),
		rego.Function2(builtinDecls[2], func(_ rego.BuiltinContext, a, r *ast.Term) (*ast.Term, error) {
			allowed, requested, err := twoStrings(a, r)
			if err != nil {
				return nil, err
			}
			if err := codec.ValidFilter(allowed); err != nil {
				return nil, fmt.Errorf("moat.filter_covers: %v", err)
			}
			return ast.BooleanTerm(codec.FilterCovers(allowed, requested)), nil
		}),
		rego.Function3(builtinDecls[3], func(_ rego.BuiltinContext, p, v, r *ast.Term) (*ast.Term, error) {
			allowed, ok, requested, err := expandArgs("moat.filter_covers_with", p, v, r)
			if err != nil || !ok {
				return ast.BooleanTerm(false), err
			}
			return ast.BooleanTerm(codec.FilterCovers(allowed, requested)), nil
		}),
	}
}

func twoStrings(a, b *ast.Term) (string, string, error) {
	x, ok1 := a.Value.(ast.String)
	y, ok2 := b.Value.(ast.String)
	if !ok1 || !ok2 {
		return "", "", fmt.Errorf("operands must be strings")
	}
	return string(x), string(y), nil
}

// expandArgs substitutes the variables into the pattern and validates the
// result as a filter. ok is false when a value could widen the pattern.
func expandArgs(name string, p, v, t *ast.Term) (filter string, ok bool, topic string, err error) {
	pattern, topic, err := twoStrings(p, t)
	if err != nil {
		return "", false, "", fmt.Errorf("%s: %v", name, err)
	}
	obj, isObj := v.Value.(ast.Object)
	if !isObj {
		return "", false, "", fmt.Errorf("%s: vars must be an object", name)
	}
	// Every value must be a string, used or not: a policy bug shows at once.
	bad := false
	obj.Foreach(func(k, val *ast.Term) {
		_, ok1 := k.Value.(ast.String)
		_, ok2 := val.Value.(ast.String)
		bad = bad || !ok1 || !ok2
	})
	if bad {
		return "", false, "", fmt.Errorf("%s: vars must map strings to strings", name)
	}
	lookup := func(key string) (string, bool) {
		val := obj.Get(ast.InternedTerm(key))
		if val == nil {
			return "", false
		}
		return string(val.Value.(ast.String)), true
	}
	filter, ok, err = expand(pattern, lookup)
	if err != nil {
		return "", false, "", fmt.Errorf("%s: %q: %v", name, pattern, err)
	}
	if !ok {
		return "", false, topic, nil
	}
	if err := codec.ValidFilter(filter); err != nil {
		return "", false, "", fmt.Errorf("%s: %q: %v", name, pattern, err)
	}
	return filter, true, topic, nil
}

// builtinASTDecls are the declarations the compiler type-checks against.
func builtinASTDecls() []*ast.Builtin {
	out := make([]*ast.Builtin, len(builtinDecls))
	for i, d := range builtinDecls {
		out[i] = &ast.Builtin{Name: d.Name, Description: d.Description, Decl: d.Decl}
	}
	return out
}

// capabilities are OPA's built-ins plus moat's.
func capabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	c.Builtins = append(c.Builtins, builtinASTDecls()...)
	return c
}
