package migrations

import (
	"fmt"
	"io/fs"
	"slices"

	"github.com/pressly/goose/v3"
)

// Status is a database's schema version against the migrations embedded in
// this binary; both storage backends report it for `meridian migrate
// --status` and refuse to start on TooNew.
type Status struct {
	// Mode is the storage mode the migrations are for.
	Mode string `json:"mode"`
	// Current is the database's schema version (0: never migrated).
	Current int64 `json:"current"`
	// Latest is the newest migration embedded in this binary.
	Latest int64 `json:"latest"`
	// Pending lists migrations not yet applied, by file name.
	Pending []string `json:"pending"`
	// TooNew is set when the database was migrated by a newer binary.
	TooNew bool `json:"too_new"`
}

// Versions lists the embedded migrations of fsys by version number, and the
// newest version.
func Versions(fsys fs.FS) (latest int64, names map[int64]string, err error) {
	files, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return 0, nil, fmt.Errorf("list migrations: %w", err)
	}
	names = map[int64]string{}
	for _, f := range files {
		v, err := goose.NumericComponent(f)
		if err != nil {
			return 0, nil, fmt.Errorf("migration %s: %w", f, err)
		}
		names[v] = f
		latest = max(latest, v)
	}
	return latest, names, nil
}

// StatusOf compares the versions a database has applied (read by the
// backend from goose's version table, in its own dialect) with fsys.
func StatusOf(mode string, fsys fs.FS, applied map[int64]bool) (Status, error) {
	st := Status{Mode: mode}
	latest, names, err := Versions(fsys)
	if err != nil {
		return st, err
	}
	st.Latest = latest
	for v := range applied {
		st.Current = max(st.Current, v)
	}
	st.TooNew = st.Current > latest
	for v, name := range names {
		if !applied[v] {
			st.Pending = append(st.Pending, name)
		}
	}
	slices.Sort(st.Pending)
	return st, nil
}
