//go:build tools

// Package kwok pins the kwok release that scripts/cluster.sh builds to run
// fake Nodes and move their pods through their phases.
package kwok

import _ "sigs.k8s.io/kwok/cmd/kwok"
