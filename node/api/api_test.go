package api

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// Every field of Status is documented in README.md's schema table, and the
// table lists no field that Status lacks.
func TestStatusSchemaDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "<!-- status-schema -->")
	table, _, ok2 := strings.Cut(table, "<!-- /status-schema -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no status-schema section")
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) > 2 && strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			documented[strings.Trim(strings.TrimSpace(cells[1]), "`")] = true
		}
	}
	typ := reflect.TypeOf(Status{})
	fields := map[string]bool{}
	for i := 0; i < typ.NumField(); i++ {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		fields[name] = true
		if !documented[name] {
			t.Errorf("status field %q is not documented in README.md", name)
		}
	}
	for name := range documented {
		if !fields[name] {
			t.Errorf("README.md documents status field %q that does not exist", name)
		}
	}
}
