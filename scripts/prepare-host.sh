#!/usr/bin/env bash
# Prepare a Debian/Ubuntu host for development and tests of kata.runtime:
# the packages the runtime, the guest image builder and the libvirt-python build need,
# then libvirtd + virtlogd running (systemd when it is PID 1, plain daemons otherwise),
# and /dev/kvm with the permissions udev would give it (root:kvm, group read-write), without
# which libvirt probes QEMU again on every domain start.
#
# Idempotent and cheap on a prepared machine: apt is only touched when a package is missing,
# daemons are only started when they do not answer, /dev/kvm only changed when it differs.
set -euo pipefail

# Packages, and why:
#   qemu-system-x86 qemu-utils      the VMM (KVM where usable, TCG otherwise)
#   libvirt-daemon-system           libvirtd + virtlogd, qemu:///system
#   libvirt-clients                 virsh (readiness checks, debugging)
#   libvirt-dev pkg-config gcc      building the libvirt-python wheel in the venv
#   python3-venv python3-dev        the dev venv; ensurepip for ansible-test's sanity venvs
#   busybox-static cpio xz-utils zstd
#                                   guest initrd: busybox, cpio archive, vmlinuz/modules decompression
#   tini                            without systemd: reaps the VMMs libvirtd daemonizes (see below)
#   openssh-server openssh-client   the fleet test's private sshd on 127.0.0.1 (scripts/loopback_sshd.py)
#                                   and the client Ansible connects with; the system sshd is
#                                   neither started nor enabled (see install_sshd_package below)
# No kernel package is installed: the guest kernel comes from the image builder, which
# downloads the distribution kernel package and unpacks it into its own image directory
# (installing it would change what a production host boots).
PACKAGES=(
    qemu-system-x86 qemu-utils
    libvirt-daemon-system libvirt-clients libvirt-dev pkg-config gcc
    python3-venv python3-dev
    busybox-static cpio xz-utils zstd
    tini
    openssh-server openssh-client
)

LIBVIRT_URI=qemu:///system
WAIT_SECONDS=${KATA_LIBVIRT_WAIT:-60}

log() { printf '[prepare-host] %s\n' "$*"; }
die() { printf '[prepare-host] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (installs packages and starts libvirtd)"
fi
command -v dpkg-query >/dev/null 2>&1 || die "only Debian/Ubuntu hosts are supported by this script"

# One run at a time per host (several checkouts may run make test together). The daemons
# started below must not inherit fd 9 (9>&-): they would hold the lock for their lifetime.
exec 9>/run/lock/kata-runtime-prepare-host.lock
if ! flock -n 9; then
    log "another prepare-host run is in progress; waiting for it"
    flock 9
fi

# --- packages -------------------------------------------------------------------------------
# openssh-server's postinst enables the system sshd and starts it through invoke-rc.d /
# deb-systemd-invoke. Only the tests' private sshd (own config, loopback port) is wanted, so
# while the package installs /usr/sbin/policy-rc.d denies every service start (exit 101; an
# existing policy that already denies it is kept, any other one is set aside and put back),
# and afterwards the units and init-script links the postinst enabled are disabled again. This
# runs only when this script installs openssh-server: an sshd the admin set up is never touched.
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_SAVED=$POLICY_RC.kata-prepare-host

restore_policy_rc() {
    rm -f "$POLICY_RC"
    if [ -e "$POLICY_RC_SAVED" ]; then
        mv -f "$POLICY_RC_SAVED" "$POLICY_RC"
    fi
}

install_sshd_package() {
    local own_policy=0
    if [ -e "$POLICY_RC_SAVED" ]; then
        restore_policy_rc  # an earlier run was killed during the install
    fi
    if [ -x "$POLICY_RC" ] && { "$POLICY_RC" ssh start >/dev/null 2>&1; [ $? -eq 101 ]; }; then
        log "existing $POLICY_RC already denies service starts; keeping it"
    else
        own_policy=1
        if [ -e "$POLICY_RC" ]; then
            mv -f "$POLICY_RC" "$POLICY_RC_SAVED"
        fi
        trap restore_policy_rc EXIT
        trap 'restore_policy_rc; exit 130' INT TERM HUP
        printf '#!/bin/sh\n# kata.runtime prepare-host.sh: no service starts while openssh-server installs\nexit 101\n' \
            >"$POLICY_RC"
        chmod 0755 "$POLICY_RC"
    fi
    log "apt-get install openssh-server (service starts denied by $POLICY_RC)"
    apt-get install -y -q --no-install-recommends openssh-server
    if [ "$own_policy" -eq 1 ]; then
        restore_policy_rc
        trap - EXIT INT TERM HUP
    fi
    log "openssh-server installed; disabling the system sshd its postinst enabled"
    if [ "$(cat /proc/1/comm 2>/dev/null || true)" = "systemd" ]; then
        systemctl disable --now --quiet ssh.service ssh.socket >/dev/null 2>&1 || true
    else
        deb-systemd-helper disable ssh.service ssh.socket >/dev/null 2>&1 || true
        update-rc.d ssh disable >/dev/null 2>&1 || true
    fi
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    log "packages: all ${#PACKAGES[@]} present"
else
    log "packages missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get update -q
    others=()
    sshd_missing=0
    for pkg in "${missing[@]}"; do
        if [ "$pkg" = openssh-server ]; then sshd_missing=1; else others+=("$pkg"); fi
    done
    if [ ${#others[@]} -gt 0 ]; then
        log "apt-get install ${others[*]}"
        apt-get install -y -q --no-install-recommends "${others[@]}"
    fi
    if [ "$sshd_missing" -eq 1 ]; then
        install_sshd_package
    fi
fi

# --- /dev/kvm as udev would leave it --------------------------------------------------------
# libvirt probes each QEMU binary once and caches the result (/var/cache/libvirt/qemu/
# capabilities/). Before every domain start it checks the cache against the host, among other
# things whether the user it runs QEMU as (Debian: libvirt-qemu, primary group kvm) can open
# /dev/kvm read-write; the probing QEMU may override file permissions and so gets KVM anyway.
# Where the two disagree libvirt throws the cache away and probes QEMU again on every start
# ("KVM was enabled when probing ..., but it is not available now" in its debug log): about
# 10 s of define+start per sandbox instead of 0.4 s. udev gives /dev/kvm root:kvm 0660 at boot;
# without udev (containers, minimal images) it stays crw------- root root, so this does what
# udev would: group kvm, group read-write (a wider mode already there, such as 0666, is kept).
# Done before libvirt is started or asked anything (even 'virsh version' looks the cache up),
# so no probe is wasted; on a running libvirtd it applies from the next lookup, as libvirtd
# notices the device's change itself (no restart).
# Running QEMU as root instead (user = "root" in /etc/libvirt/qemu.conf) would also end the
# re-probe, but would make every VMM root; see docs/role-kata_host.md.
KVM_DEV=/dev/kvm
KVM_GROUP=kvm

# 0 when the user libvirt runs QEMU as (its DAC base label) has the kvm group, 1 when not,
# 2 when it cannot tell. libvirt gives QEMU the user's own groups and its configured group.
qemu_user_in_kvm_group() {
    local label uid gid kvm_gid groups
    label=$(virsh -c "$LIBVIRT_URI" capabilities 2>/dev/null \
        | sed -n "s|.*<baselabel type='kvm'>\([^<]*\)</baselabel>.*|\1|p" | head -n 1)
    uid=${label%%:*}; uid=${uid#+}
    gid=${label#*:}; gid=${gid#+}
    kvm_gid=$(getent group "$KVM_GROUP" | cut -d: -f3)
    case "$uid:$gid" in
        *[!0-9:]*|:*|*:) return 2 ;;
    esac
    [ -n "$kvm_gid" ] || return 2
    if [ "$uid" -eq 0 ] || [ "$gid" -eq "$kvm_gid" ]; then
        return 0
    fi
    groups=$(id -G "$(getent passwd "$uid" | cut -d: -f1)" 2>/dev/null) || return 2
    case " $groups " in
        *" $kvm_gid "*) return 0 ;;
    esac
    return 1
}

if [ -c "$KVM_DEV" ]; then
    if ! getent group "$KVM_GROUP" >/dev/null; then
        log "WARNING: no '$KVM_GROUP' group: $KVM_DEV left as it is ($(stat -c '%A %U:%G' "$KVM_DEV")); if libvirt's QEMU user cannot open it, libvirt probes QEMU again on every domain start"
    else
        read -r kvm_owner kvm_group kvm_mode < <(stat -c '%U %G %a' "$KVM_DEV")
        if [ "$kvm_owner" = root ] && [ "$kvm_group" = "$KVM_GROUP" ] && [ $((8#$kvm_mode & 8#060)) -eq $((8#060)) ]; then
            log "$KVM_DEV already root:$KVM_GROUP with group read-write ($(stat -c '%A' "$KVM_DEV"))"
        else
            chown "root:$KVM_GROUP" "$KVM_DEV"
            chmod g+rw "$KVM_DEV"
            log "$KVM_DEV was $kvm_owner:$kvm_group $kvm_mode, now $(stat -c '%U:%G %a' "$KVM_DEV") as udev sets it (libvirt keeps its QEMU capabilities cache)"
        fi
    fi
fi

# --- libvirt daemons ------------------------------------------------------------------------
libvirt_answers() {
    virsh -c "$LIBVIRT_URI" version >/dev/null 2>&1
}

daemon_running() {
    # exact process name from /proc/<pid>/comm (minimal images have no procps/pgrep)
    local comm name
    for comm in /proc/[0-9]*/comm; do
        read -r name <"$comm" 2>/dev/null || continue
        if [ "$name" = "$1" ]; then
            return 0
        fi
    done
    return 1
}

if [ "$(cat /proc/1/comm 2>/dev/null || true)" = "systemd" ]; then
    log "systemd is PID 1: enabling virtlogd and libvirtd units"
    systemctl enable --now virtlogd.socket libvirtd.socket >/dev/null 2>&1 || true
    systemctl start virtlogd.service libvirtd.service
else
    # Without systemd libvirtd alone is not enough: starting a domain needs virtlogd's socket.
    if daemon_running virtlogd; then
        log "virtlogd already running"
    else
        log "starting virtlogd -d (no systemd)"
        virtlogd -d 9>&-
    fi
    # libvirtd daemonizes each qemu, so a VMM's parent is whoever adopts orphans, and
    # 'virsh destroy' returns only once the dead qemu has been reaped. Without systemd that
    # adopter may reap seconds late (a container's PID 1 often does); tini -s makes itself
    # the subreaper right above libvirtd and reaps at once, which is most of a forced delete.
    if daemon_running libvirtd; then
        log "libvirtd already running"
    else
        log "starting libvirtd under tini -s (no systemd; tini reaps the VMMs it daemonizes)"
        setsid -f tini -s -- libvirtd </dev/null >/dev/null 2>&1 9>&-
    fi
fi

if libvirt_answers; then
    log "libvirt answers on $LIBVIRT_URI"
else
    log "waiting up to ${WAIT_SECONDS}s for 'virsh -c $LIBVIRT_URI version' to answer"
    start=$SECONDS
    until libvirt_answers; do
        if [ $((SECONDS - start)) -ge "$WAIT_SECONDS" ]; then
            virsh -c "$LIBVIRT_URI" version || true
            die "libvirt did not answer on $LIBVIRT_URI within ${WAIT_SECONDS}s"
        fi
        sleep 0.5
    done
    log "libvirt answers on $LIBVIRT_URI after $((SECONDS - start))s"
fi

if [ ! -S /run/libvirt/virtlogd-sock ]; then
    die "virtlogd socket /run/libvirt/virtlogd-sock is missing: domains will not start"
fi

# --- KVM: libvirt's QEMU user, and for information the accelerator -------------------------
if [ -c "$KVM_DEV" ]; then
    rc=0
    qemu_user_in_kvm_group || rc=$?
    if [ "$rc" -eq 1 ]; then
        log "WARNING: the user libvirt runs QEMU as is not in the '$KVM_GROUP' group, so it cannot open $KVM_DEV and libvirt probes QEMU again on every domain start: add it (usermod -a -G $KVM_GROUP <user>) and restart libvirtd"
    fi
    if [ -d /sys/module/kvm_pvm ]; then
        log "/dev/kvm present (paravirtual kvm_pvm: stock guests will run under TCG)"
    else
        log "/dev/kvm present"
    fi
else
    log "/dev/kvm absent: guests will run under TCG (software emulation)"
fi
log "host ready"
