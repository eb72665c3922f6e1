#!/usr/bin/env bash
# Builds the three wxpush images (deploy/docker/*.Dockerfile) as REGISTRY/wxpush-NAME:TAG with
# the OCI builder this machine has, and prints the `helm install` line that uses them.
#
#   scripts/images.sh [--dry-run] [--push] [--builder docker|podman|buildah] REGISTRY TAG
#
#   --dry-run   print the exact commands, run nothing (no builder needed)
#   --push      push the images after building them
#   --builder   use this builder (default: $WXPUSH_IMAGE_BUILDER, else the first of docker with a
#               running engine, podman, buildah)
#
# Example: scripts/images.sh --push registry.example.com/team 0.1.0
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0
push=0
builder="${WXPUSH_IMAGE_BUILDER:-}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --push) push=1 ;;
    --builder) [ $# -ge 2 ] || usage; builder="$2"; shift ;;
    --builder=*) builder="${1#--builder=}" ;;
    -h|--help) usage ;;
    -*) echo "images.sh: unknown option $1" >&2; usage ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ "${#args[@]}" -eq 2 ] || usage
registry="${args[0]%/}"
tag="${args[1]}"
# A registry path and a tag as OCI references allow them (lower-case path, tag ≤ 128 chars).
if ! [[ "$registry" =~ ^[a-z0-9]([a-z0-9._:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$ ]]; then
  echo "images.sh: REGISTRY '$registry' is not a registry path such as registry.example.com/team" >&2
  exit 2
fi
if ! [[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
  echo "images.sh: TAG '$tag' is not a valid image tag (letters, digits, _ . -; at most 128)" >&2
  exit 2
fi

if [ -z "$builder" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v podman >/dev/null 2>&1; then
    builder=podman
  elif command -v buildah >/dev/null 2>&1; then
    builder=buildah
  elif [ "$dry_run" = 1 ]; then
    builder=docker
  else
    echo "images.sh: no OCI builder found: install docker (with a running engine), podman or" \
      "buildah, or pass --builder; --dry-run prints the commands without one" >&2
    exit 1
  fi
fi
case "$builder" in docker|podman|buildah) ;; *)
  echo "images.sh: --builder must be docker, podman or buildah, not '$builder'" >&2; exit 2 ;;
esac

run() {
  echo "+ $*"
  if [ "$dry_run" = 0 ]; then "$@"; fi
}

# The image names are set once in api/src/images.rs; tests/tests/images.rs checks this list.
for part in operator pusher sandbox; do
  ref="$registry/wxpush-$part:$tag"
  file="deploy/docker/$part.Dockerfile"
  case "$builder" in
    # The Dockerfiles use BuildKit cache mounts; docker reads FILE.dockerignore by itself.
    docker) run env DOCKER_BUILDKIT=1 docker build -f "$file" -t "$ref" . ;;
    podman|buildah) run "$builder" build -f "$file" --ignorefile "$file.dockerignore" -t "$ref" . ;;
  esac
  if [ "$push" = 1 ]; then run "$builder" push "$ref"; fi
done

echo
echo "Install the operator with these images:"
echo "helm install wxpush-operator charts/wxpush-operator -n wxpush-system --create-namespace" \
  "--set image.repository=$registry/wxpush-operator,image.tag=$tag,pusherImage.repository=$registry/wxpush-pusher,pusherImage.tag=$tag"
