//go:build tools

// Package kube pins the Kubernetes release whose control-plane programs
// scripts/cluster.sh builds. The blank imports keep `go mod tidy` from
// dropping the requirement; nothing here is compiled into a program.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
