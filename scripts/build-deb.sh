#!/usr/bin/env bash
# Build the Debian package of ami2amqp from a built binary, with dpkg-deb
# alone (no debhelper, no cargo-deb: every file of the package is listed
# here, so what it installs can be read in one place).
#
#   scripts/build-deb.sh [--binary PATH] [--out DIR] [--fast]
#
#   --binary  the ami2amqp binary to package (default target/release/ami2amqp;
#             `make deb` builds it). A stripped copy goes into the package.
#   --out     where the .deb goes (default target/debian)
#   --fast    gzip -1 instead of xz (the tests package a debug build)
#
# DEB_MAINTAINER overrides the Maintainer field.
#
# Prints the path of the .deb on its last line.
#
# What the package installs:
#   /usr/bin/ami2amqp
#   /etc/ami2amqp/ami2amqp.toml        conffile: `ami2amqp config example`, with the
#                                      package's paths (mappings, spool)
#   /etc/ami2amqp/mappings/*.toml      conffiles: the default mapping set
#   /etc/default/ami2amqp              conffile: environment for the unit (secrets)
#   /lib/systemd/system/ami2amqp.service  the hardened unit (contrib/), /usr/bin path
#   /usr/share/man/man1/ami2amqp*.1.gz    `ami2amqp generate man`
#   bash, zsh and fish completions         `ami2amqp generate completions`
#   /usr/share/doc/ami2amqp/               copyright, changelog, README, docs
# The maintainer scripts create the system user `ami2amqp` and
# /var/lib/ami2amqp (the spool); purge removes both.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

binary=$root/target/release/ami2amqp
out=$root/target/debian
compress=(-Zxz)
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
    esac
done
die() { echo "build-deb: error: $*" >&2; exit 1; }
[ -x "$binary" ] || die "$binary not found: build it first (make deb does)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (a Debian system has it)"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
debversion="$version-1"
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-ami2amqp maintainers <maintainers@ami2amqp.dev>}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/ami2amqp

install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/ami2amqp/mappings" "$pkg/etc/default" \
    "$pkg/lib/systemd/system" "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/ami2amqp" \
    "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
    "$pkg/usr/share/fish/vendor_completions.d"

# The binary, stripped (the debug info stays in the build tree).
install -m 0755 "$binary" "$pkg/usr/bin/ami2amqp"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/ami2amqp"

# The config: the generated example with the package's paths.
"$binary" config example | awk '
    /^\[/ { section = $0 }
    section == "[mappings]" && /^(# )?dir = / { print "dir = \"/etc/ami2amqp/mappings\""; next }
    section == "[spool]" && /^dir = / { print "dir = \"/var/lib/ami2amqp/spool\""; next }
    { print }
' >"$pkg/etc/ami2amqp/ami2amqp.toml"
grep -q '^dir = "/var/lib/ami2amqp/spool"' "$pkg/etc/ami2amqp/ami2amqp.toml" ||
    die "the generated config has no [spool] dir to point at /var/lib/ami2amqp"
grep -q '^dir = "/etc/ami2amqp/mappings"' "$pkg/etc/ami2amqp/ami2amqp.toml" ||
    die "the generated config has no [mappings] dir to point at /etc/ami2amqp/mappings"
install -m 0644 mappings/*.toml "$pkg/etc/ami2amqp/mappings/"
cat >"$pkg/etc/default/ami2amqp" <<'EOF'
# Environment of the ami2amqp service (systemd EnvironmentFile). The example
# config reads the secret of its [[server]] pbx1 from here; prefer
# secret_file for real deployments (docs/config.md).
#AMI2AMQP_PBX1_SECRET=
EOF

# The unit: contrib's, with the package's binary path and the environment file.
sed -e 's#/usr/local/bin/ami2amqp#/usr/bin/ami2amqp#' \
    -e 's#^Environment=RUST_LOG=info#Environment=RUST_LOG=info\nEnvironmentFile=-/etc/default/ami2amqp#' \
    -e '/^#   /d' -e '/^# systemd unit for ami2amqp. Install:/d' \
    contrib/ami2amqp.service >"$pkg/lib/systemd/system/ami2amqp.service"
chmod 0644 "$pkg/lib/systemd/system/ami2amqp.service"

# Man pages and completions, generated from the command line.
"$binary" generate man "$stage/man"
for f in "$stage"/man/*.1; do gzip -9n -c "$f" >"$pkg/usr/share/man/man1/$(basename "$f").gz"; done
"$binary" generate completions "$stage/completions"
install -m 0644 "$stage/completions/ami2amqp.bash" "$pkg/usr/share/bash-completion/completions/ami2amqp"
install -m 0644 "$stage/completions/_ami2amqp" "$pkg/usr/share/zsh/vendor-completions/_ami2amqp"
install -m 0644 "$stage/completions/ami2amqp.fish" "$pkg/usr/share/fish/vendor_completions.d/ami2amqp.fish"

# Documentation.
doc=$pkg/usr/share/doc/ami2amqp
date_r=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ami2amqp

Files: *
Copyright: $(date -u -d "$date_r" +%Y) the ami2amqp authors
License: $(sed -n 's/^license = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
EOF
printf 'ami2amqp (%s) unstable; urgency=medium\n\n  * Built from the ami2amqp source tree by scripts/build-deb.sh.\n\n -- %s  %s\n' \
    "$debversion" "$maintainer" "$date_r" | gzip -9n >"$doc/changelog.Debian.gz"
for f in README.md docs/config.md docs/deploy.md docs/facade.md docs/actions.md docs/mapping.md; do
    [ -f "$f" ] && gzip -9n -c "$f" >"$doc/$(basename "$f").gz"
done

# Control files.
glibc=$(objdump -T "$pkg/usr/bin/ami2amqp" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<EOF
Package: ami2amqp
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: libc6 (>= ${glibc:-2.34}), adduser
Suggests: rabbitmq-server, asterisk
Section: net
Priority: optional
Homepage: https://github.com/ami2amqp/ami2amqp
Description: bridge between the Asterisk Manager Interface and RabbitMQ
 ami2amqp holds the AMI connections of one or more Asterisk servers and
 publishes their events to RabbitMQ topic exchanges, routed by mapping
 files, through an on-disk spool with publisher confirms. Applications
 send actions back as AMQP messages, checked against an allow-list, and
 legacy AMI applications can connect to its AMI facade instead of
 Asterisk.
EOF
(cd "$pkg" && find etc -type f | sort | sed 's#^#/#') >"$pkg/DEBIAN/conffiles"

cat >"$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    install -d -m 0750 /var/lib/ami2amqp
    if ! getent passwd ami2amqp >/dev/null; then
        adduser --system --group --home /var/lib/ami2amqp --no-create-home \
            --gecos "ami2amqp bridge" ami2amqp >/dev/null
    fi
    install -d -m 0750 -o ami2amqp -g ami2amqp /var/lib/ami2amqp
    chown root:ami2amqp /etc/ami2amqp /etc/ami2amqp/ami2amqp.toml /etc/default/ami2amqp
    chmod 0750 /etc/ami2amqp
    chmod 0640 /etc/ami2amqp/ami2amqp.toml /etc/default/ami2amqp
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
fi
exit 0
EOF
cat >"$pkg/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop ami2amqp.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat >"$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
    # The spool (unconfirmed messages) and the user go only with purge.
    rm -rf /var/lib/ami2amqp
    if getent passwd ami2amqp >/dev/null; then
        deluser --system ami2amqp >/dev/null 2>&1 || userdel ami2amqp || true
    fi
    if getent group ami2amqp >/dev/null; then
        delgroup --system ami2amqp >/dev/null 2>&1 || groupdel ami2amqp || true
    fi
    rmdir /etc/ami2amqp/mappings /etc/ami2amqp 2>/dev/null || true
fi
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

find "$pkg" -type d -exec chmod 0755 {} +
mkdir -p "$out"
deb=$out/ami2amqp_${debversion}_${arch}.deb
dpkg-deb --root-owner-group "${compress[@]}" --build "$pkg" "$deb" >/dev/null
echo "$deb"
