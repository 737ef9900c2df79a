// dockerfile-check parses a Dockerfile with BuildKit's own parser and linter (what `docker
// build` runs first), with no Docker engine: a syntax error or a lint warning fails it, and the
// stages are printed as JSON on stdout (name, base image, each instruction as written) for
// tests to read.
//
//	go build -o dockerfile-check ./dockerfile-check && ./dockerfile-check ../../Dockerfile
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

type stage struct {
	Name         string   `json:"name"`
	Base         string   `json:"base"`
	Instructions []string `json:"instructions"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-check DOCKERFILE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fail(err)
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		fail(err)
	}
	for _, w := range ast.Warnings {
		fmt.Fprintf(os.Stderr, "warning: %s\n", w.Short)
	}
	warnings := len(ast.Warnings)
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		warnings++
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		fmt.Fprintf(os.Stderr, "line %d: %s: %s\n", line, rule, msg)
	}})
	stages, _, err := instructions.Parse(ast.AST, lint)
	if err != nil {
		fail(err)
	}
	out := make([]stage, 0, len(stages))
	for _, s := range stages {
		st := stage{Name: s.Name, Base: s.BaseName}
		for _, c := range s.Commands {
			st.Instructions = append(st.Instructions, fmt.Sprint(c))
		}
		out = append(out, st)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
	if warnings > 0 {
		fmt.Fprintf(os.Stderr, "dockerfile-check: %d warning(s)\n", warnings)
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "dockerfile-check: %v\n", err)
	os.Exit(1)
}
