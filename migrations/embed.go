package migrations

import (
	"embed"
	"io/fs"
	"path"
	"slices"
	"strings"
)

//go:embed postgres/*.sql sqlite/*.sql timescale/*.sql
var files embed.FS

// Postgres returns the plain-PostgreSQL migrations (a flat directory of
// goose .sql files).
func Postgres() fs.FS { return sub("postgres") }

// Timescale returns the PostgreSQL migrations for TimescaleDB mode: the
// postgres/ files with those of timescale/ replacing same-named ones.
func Timescale() fs.FS {
	return overlay{base: sub("postgres"), top: sub("timescale")}
}

// SQLite returns the embedded store's migrations.
func SQLite() fs.FS { return sub("sqlite") }

func sub(dir string) fs.FS {
	f, err := fs.Sub(files, dir)
	if err != nil {
		// fs.Sub only fails on an invalid path, and dir is a constant.
		panic("migrations: " + err.Error())
	}
	return f
}

// overlay is a flat, read-only file system: a name present in top hides the
// same name in base. Only the root directory is listed, which is all goose
// reads.
type overlay struct{ base, top fs.FS }

func (o overlay) Open(name string) (fs.File, error) {
	if name != "." && !strings.Contains(name, "/") {
		if f, err := o.top.Open(name); err == nil {
			return f, nil
		}
	}
	return o.base.Open(name)
}

func (o overlay) ReadDir(name string) ([]fs.DirEntry, error) {
	if name != "." {
		return fs.ReadDir(o.base, name)
	}
	top, err := fs.ReadDir(o.top, ".")
	if err != nil {
		return nil, err
	}
	base, err := fs.ReadDir(o.base, ".")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	out := slices.Clone(top)
	for _, e := range top {
		seen[e.Name()] = true
	}
	for _, e := range base {
		if !seen[e.Name()] {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

// Glob implements fs.GlobFS over the merged root listing.
func (o overlay) Glob(pattern string) ([]string, error) {
	if strings.Contains(pattern, "/") {
		return fs.Glob(o.base, pattern)
	}
	entries, err := o.ReadDir(".")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if ok, err := path.Match(pattern, e.Name()); err != nil {
			return nil, err
		} else if ok {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
