//go:build tools

// Package etcd pins the etcd release that scripts/cluster.sh builds as the
// control plane's store.
package etcd

import _ "go.etcd.io/etcd/server/v3"
