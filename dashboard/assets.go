package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"strings"
)

// assetsFS holds the built front end under assets/dist (app.js, app.css),
// produced by `make dashboard` (esbuild) and not committed. The committed
// assets/README.md keeps the embed pattern valid on a tree without the
// bundle; pages then say how to build it.
//
//go:embed all:assets
var assetsFS embed.FS

// bundle describes the built front end, if present.
type bundle struct {
	built   bool
	version string // content hash, appended as ?v= so the files can be cached forever
}

func loadBundle() bundle {
	js, err := fs.ReadFile(assetsFS, "assets/dist/app.js")
	if err != nil {
		return bundle{}
	}
	css, _ := fs.ReadFile(assetsFS, "assets/dist/app.css")
	h := sha256.New()
	h.Write(js)
	h.Write(css)
	return bundle{built: true, version: hex.EncodeToString(h.Sum(nil))[:12]}
}

// assetHandler serves /assets/dist/... from the embedded bundle. Requests
// carrying the content hash (?v=) are cacheable for a year; the rest must
// revalidate.
func (d *Dashboard) assetHandler() http.Handler {
	sub, _ := fs.Sub(assetsFS, "assets")
	files := http.StripPrefix("/assets/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/assets/dist/") || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("v") != "" {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "no-cache")
		}
		files.ServeHTTP(w, r)
	})
}
