package v1alpha1

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The types in this file decode without ever failing. The manager reads every object of a
// kind with one list; with metav1.Duration or a plain corev1.PodTemplateSpec, one stored
// object Go cannot decode (a duration that overflows, written before the CRD bounded it, or a
// pod template field of the wrong type) failed that list, so the caches never synced and the
// manager stopped. Instead, such a field keeps what was stored and says why it cannot be read;
// UnreadableFields lists those fields so the object's status can name them.

// Duration is a length of time as Go's time.ParseDuration reads it ("300ms", "1m30s", "2h").
// Each number has at most 5 digits before the point and 9 after, and at most 4 parts, so the
// sum always fits Go's time.Duration (4 x 99999h is about 1.4e18 ns, under 9.2e18).
// +kubebuilder:validation:Type=string
// +kubebuilder:validation:MaxLength=68
// +kubebuilder:validation:Pattern=`^([0-9]{1,5}(\.[0-9]{1,9})?(ms|s|m|h)){1,4}$`
type Duration struct {
	// Duration is the decoded value; zero when Invalid is set.
	Duration time.Duration `json:"-"`
	// Invalid is the stored text when Go cannot read it as a duration.
	Invalid string `json:"-"`
}

// UnmarshalJSON implements json.Unmarshaler. It never fails: text Go cannot read is kept in
// Invalid.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		*d = Duration{Invalid: string(b)}
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		*d = Duration{Invalid: s}
		return nil
	}
	*d = Duration{Duration: v}
	return nil
}

// MarshalJSON implements json.Marshaler; an unreadable value is written back as stored.
func (d Duration) MarshalJSON() ([]byte, error) {
	if d.Invalid != "" {
		return json.Marshal(d.Invalid)
	}
	return json.Marshal(d.Duration.String())
}

// ToUnstructured implements the apimachinery value.UnstructuredConverter interface.
func (d Duration) ToUnstructured() interface{} {
	if d.Invalid != "" {
		return d.Invalid
	}
	return d.Duration.String()
}

// problem says why the stored value cannot be used.
func (d *Duration) problem() string {
	if d.Invalid == "" {
		return ""
	}
	return fmt.Sprintf("%q is not a duration Go can read (it is out of range or malformed): write one like 30s, 1m30s or 2h within the field's range", d.Invalid)
}

// FunctionTemplate is the pod template of a MeshFunction: a corev1.PodTemplateSpec whose
// decoding never fails. Its CRD schema describes the fields Weft reads (see
// functiontemplate_schema.yaml); the rest of a pod template is kept as written and checked by
// the API server when Weft writes the Deployment.
type FunctionTemplate struct {
	corev1.PodTemplateSpec `json:",inline"`

	// DecodeError says why the stored template is not a pod template; the pod template is
	// then empty and Raw holds what was stored.
	DecodeError string `json:"-"`
	// Raw is the stored template when DecodeError is set, written back unchanged.
	Raw []byte `json:"-"`
}

// UnmarshalJSON implements json.Unmarshaler. It never fails: a template that does not decode
// is kept in Raw with the reason in DecodeError.
func (t *FunctionTemplate) UnmarshalJSON(b []byte) error {
	var p corev1.PodTemplateSpec
	if err := json.Unmarshal(b, &p); err != nil {
		*t = FunctionTemplate{DecodeError: err.Error(), Raw: bytes.Clone(b)}
		return nil
	}
	*t = FunctionTemplate{PodTemplateSpec: p}
	return nil
}

// MarshalJSON implements json.Marshaler; an undecodable template is written back as stored.
func (t FunctionTemplate) MarshalJSON() ([]byte, error) {
	if t.DecodeError != "" {
		return t.Raw, nil
	}
	return json.Marshal(t.PodTemplateSpec)
}

func (t *FunctionTemplate) problem() string {
	if t.DecodeError == "" {
		return ""
	}
	return fmt.Sprintf("is not a pod template (%s): fix the field's type as in a Deployment's spec.template", t.DecodeError)
}

// UnreadableFields lists the fields of the route that were stored but cannot be read, each
// as "path: why". An object with any is refused (Accepted=False, Invalid) until fixed.
func (r *MeshRoute) UnreadableFields() []string { return unreadable(reflect.ValueOf(&r.Spec), "spec") }

// UnreadableFields lists the fields of the function that were stored but cannot be read.
func (f *MeshFunction) UnreadableFields() []string {
	return unreadable(reflect.ValueOf(&f.Spec), "spec")
}

// UnreadableFields lists the fields of the pool that were stored but cannot be read.
func (p *RedisProxy) UnreadableFields() []string { return unreadable(reflect.ValueOf(&p.Spec), "spec") }

var (
	durationType = reflect.TypeOf(Duration{})
	templateType = reflect.TypeOf(FunctionTemplate{})
)

// unreadable walks v (a spec) and reports every Duration and FunctionTemplate that could not
// be decoded, with its JSON path.
func unreadable(v reflect.Value, path string) []string {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return unreadable(v.Elem(), path)
	case reflect.Slice:
		var out []string
		for i := range v.Len() {
			out = append(out, unreadable(v.Index(i), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	case reflect.Struct:
	default:
		return nil
	}
	switch v.Type() {
	case durationType:
		d := v.Addr().Interface().(*Duration)
		if p := d.problem(); p != "" {
			return []string{path + ": " + p}
		}
		return nil
	case templateType:
		t := v.Addr().Interface().(*FunctionTemplate)
		if p := t.problem(); p != "" {
			return []string{path + " " + p}
		}
		return nil
	}
	var out []string
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		p := path
		if name != "" {
			p = path + "." + name
		}
		out = append(out, unreadable(v.Field(i), p)...)
	}
	return out
}
