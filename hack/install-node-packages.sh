#!/usr/bin/env bash
# What the test bed's real nodes take from Debian: runc, the CNI plugins, iptables for
# kube-proxy, socat (the API server's forwarder into the nodes' namespace), and buildah
# with debootstrap to build the project's images, ipset for kube-router (the NetworkPolicy
# engine). containerd, the kubelet, kube-proxy, CoreDNS and kube-router are built from Go
# modules (`python -m testbed build`).
set -euo pipefail
packages=(runc containernetworking-plugins iptables conntrack socat buildah debootstrap ipset)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "==> installing Debian's ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "error: real nodes need root (network namespaces, cgroups, mounts); run as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
