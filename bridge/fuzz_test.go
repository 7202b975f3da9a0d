package bridge

import (
	"encoding/json"
	"testing"

	"github.com/tinylib/msgp/msgp"
)

// FuzzCommand feeds arbitrary bytes to the MQTT/HTTP command parser: it
// must never panic, an accepted command must satisfy every rule (its id
// can become a topic level, its payload is exactly one MessagePack value),
// and a recovered id on error must be topic-safe too.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		`{"id":"c1","name":"reboot","payload":{"delay":5},"queue":true}`,
		`{"id":"c2","name":"set","payload":[1,2.5,"x",null,true,{"a":{}}]}`,
		`{"id":"c3","name":"n","payload":18446744073709551615}`,
		`{"id":"c4","name":"n","payload":-9223372036854775809}`,
		`{"id":"c5","name":"n","payload":1e400}`,
		`{"id":"c6","name":5}`,
		`{"id":"a/#","name":"x"}`,
		`{"id":"c7","name":"x"} trailing`,
		`{"id":"c8","name":"x","payload":"\ud800"}`,
		`[[[[[[[[[[`,
		``,
		`null`,
		`{"id":"c9","name":"x","payload":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, id, err := parseCommand(data, true)
		if err != nil {
			if id != "" && checkID(id) != nil {
				t.Fatalf("recovered unsafe id %q", id)
			}
			return
		}
		if checkID(c.ID) != nil || c.Name == "" || len(c.Name) > 64 {
			t.Fatalf("accepted invalid command %+v", c)
		}
		if c.Payload != nil {
			if _, rest, err := msgp.ReadIntfBytes(c.Payload); err != nil || len(rest) != 0 {
				t.Fatalf("payload is not one MessagePack value: %v (%d trailing)", err, len(rest))
			}
			// and it converts back to valid JSON
			j, err := msgpackToJSON(c.Payload)
			if err != nil || !json.Valid(j) {
				t.Fatalf("payload does not convert back to JSON: %v %s", err, j)
			}
		}
	})
}
