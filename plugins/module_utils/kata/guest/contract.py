# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the host and the guest image agree on: device names, 9p tags, guest paths, the kernel
command line and the markers the guest prints.

Constants only, no imports: the libvirt backend, the lifecycle code, the OCI spec writer, the
hooks runner and the image builder (which renders the guest's ``/init`` from them) all take
these names from here, and a module that ships this file ships nothing else with it.

The in-guest agent (``guest/agent.py``) runs alone in the initrd, with nothing of the
collection next to it, so it keeps its own copy of the names it needs under the same names
(``GUEST_NAMES``); a unit test checks that the copy equals this file.
"""

from __future__ import annotations

# virtio-serial port the agent listens on (``/sys/class/virtio-ports/*/name`` in the guest).
AGENT_PORT_NAME = 'agent.0'
# The agent protocol (JSON lines, docs/internals.md): its version, in the agent's ``ping``
# reply, and the longest line either side accepts (the guest a request, the host a reply).
PROTOCOL = 1
MAX_LINE = 4 * 1024 * 1024

# How every 9p share is mounted, by /init at boot and by a clone's post_clone alike; each
# share's own options (below) follow.
NINEP_OPTIONS = 'trans=virtio,version=9p2000.L,msize=262144'

# The read-only share: the host-private ``<sandbox>/shared`` directory, where the host binds
# each container's rootfs read-only at ``<cid>/rootfs``. The guest cannot create, change or
# plant anything in it (9p export and bind mounts are both read-only).
SHARED_TAG = 'kataShared'
SHARED_MOUNT = '/run/kata-containers/shared'
SHARED_OPTIONS = 'ro,nodev'

# The writable share: a size-capped tmpfs at ``<sandbox>/output`` on the host, where the agent
# writes each container's stdout and stderr (``<cid>/stdout``, ``<cid>/stderr``). Nothing on it
# is executable or a device.
OUTPUT_TAG = 'kataOutput'
OUTPUT_MOUNT = '/run/kata-containers/output'
OUTPUT_OPTIONS = 'nosuid,nodev,noexec'

# The volume share: ``<sandbox>/volumes`` on the host, a small capped tmpfs exported read-write
# in 9p's ``mapped`` mode (the guest's owners, modes, device nodes and symlinks only exist as
# xattrs and plain root-owned 0600 files on the host). The host binds each read-write volume of
# a container at ``<cid>@<n>`` in it (docs/volumes.md); each container mounts its own with its
# own flags. Read-only volumes go through the read-only share, at ``<cid>/volumes/<n>``.
VOLUMES_TAG = 'kataVolumes'
VOLUMES_MOUNT = '/run/kata-containers/volumes'
VOLUMES_OPTIONS = 'nosuid,nodev'

# On the kernel command line of a guest booted to become a VM template: its /init mounts no 9p
# share (QEMU refuses to migrate while one is mounted); each clone mounts them after resume,
# through the agent's ``post_clone`` request.
TEMPLATE_FLAG = 'kata.template=1'

# What the guest kernel always gets; the config's and the user's kernel_params come after.
# Serial console (the console log is read from it), quiet, panic=-1 reboots at once on a panic
# (the VM is configured to stop on reboot), and no probing of legacy devices and clocks a VM
# does not have: under TCG the probing skipped costs ~0.4 s of boot. The guest's /init relies
# on none of it.
KERNEL_PARAMS = (
    'console=ttyS0 quiet panic=-1 reboot=k noreplace-smp tsc=reliable no_timer_check '
    'i8042.noaux=1 i8042.nopnp=1 i8042.dumbkbd=1 i8042.direct=1 8250.nr_uarts=1 '
    'cryptomgr.notests rcupdate.rcu_expedited=1 random.trust_cpu=on'
)

# Printed by the guest's /init on the serial console right before the agent starts.
INIT_MARKER = 'kata-init: starting agent'

# The PATH a process gets when its environment sets none (runc's default): the generated OCI
# spec's env, the host's hooks, and the guest agent for a container whose env has no PATH.
DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# The guest's network (docs/networking.md). ``kata.net=`` on the kernel command line says how the
# agent sets up the NIC (NET_IFACE): ``user`` (QEMU user-mode networking: the static address,
# gateway and DNS server slirp expects, below) or ``dhcp`` (a bridge or libvirt network: busybox
# udhcpc). Without it the guest has only its loopback interface. The agent writes the DNS
# server(s) into NET_RESOLV_CONF, which each container gets bound read-only at /etc/resolv.conf.
NET_PARAM = 'kata.net'
NET_STATIC_USER = 'user'
NET_DHCP = 'dhcp'
NET_IFACE = 'eth0'
USER_NET_ADDRESS = '10.0.2.15/24'
USER_NET_GATEWAY = '10.0.2.2'
USER_NET_DNS = '10.0.2.3'
NET_RESOLV_CONF = '/run/kata-containers/resolv.conf'
# Each container's cgroup in the guest (cgroup v2, mounted by /init): <root>/<CGROUP_PARENT>/<cid>,
# with the memory, cpu, cpuset and pids controllers enabled; the files a limit may set there.
CGROUP_PARENT = 'kata'
CGROUP_CONTROLLERS = ('cpu', 'cpuset', 'memory', 'pids')
LIMIT_FILES = ('cpuset.cpus', 'cpuset.mems', 'cpu.weight', 'cpu.max', 'cpu.max.burst', 'cpu.idle',
               'memory.low', 'memory.max', 'memory.swap.max', 'pids.max')

# The names guest/agent.py copies (the test compares each one with the value above).
GUEST_NAMES = ('AGENT_PORT_NAME', 'PROTOCOL', 'MAX_LINE', 'NINEP_OPTIONS', 'SHARED_TAG', 'SHARED_MOUNT',
               'SHARED_OPTIONS', 'OUTPUT_TAG', 'OUTPUT_MOUNT', 'OUTPUT_OPTIONS', 'VOLUMES_TAG', 'VOLUMES_MOUNT',
               'VOLUMES_OPTIONS', 'TEMPLATE_FLAG', 'DEFAULT_PATH',
               'NET_PARAM', 'NET_STATIC_USER', 'NET_DHCP', 'NET_IFACE', 'USER_NET_ADDRESS', 'USER_NET_GATEWAY',
               'USER_NET_DNS', 'NET_RESOLV_CONF',
               'CGROUP_PARENT', 'CGROUP_CONTROLLERS', 'LIMIT_FILES')
