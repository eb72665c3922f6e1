//go:build tools

// Package helm pins the Helm CLI release that scripts/cluster.sh builds.
package helm

import _ "helm.sh/helm/v4/cmd/helm"
