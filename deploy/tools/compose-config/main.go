// compose-config checks Compose files the way `docker compose config` does, with no Docker
// engine and no compose plugin: compose-go (the loader docker compose itself uses) validates
// them against the Compose Specification schema, interpolates variables, resolves anchors,
// extends and relative paths, and the resolved project is printed as JSON on stdout.
//
//	go build -o compose-config ./compose-config && ./compose-config -f ../compose/docker-compose.yml
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose-config: %v\n", err)
	os.Exit(1)
}

func main() {
	var paths files
	flag.Var(&paths, "f", "compose file (repeatable)")
	flag.Parse()
	if len(paths) == 0 {
		fmt.Fprintln(os.Stderr, "compose-config: give at least one -f FILE")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(paths, cli.WithOsEnv, cli.WithDotEnv)
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(append(out, '\n'))
}
