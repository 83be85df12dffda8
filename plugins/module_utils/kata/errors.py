# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Error types raised by every layer of the runtime core.

Each error carries a message that says what went wrong and, where it helps, what to do.
Modules turn any KataError into ``fail_json(msg=str(err))`` in one place.
"""

from __future__ import annotations


class KataError(Exception):
    """Base of every error the runtime core raises on purpose."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self):
        return self.msg


class InvalidArgument(KataError):
    """Bad input: an ID, a path, an option value. Raised before any state is touched."""


class NotFound(KataError):
    """The named sandbox or container does not exist."""


class Conflict(KataError):
    """The request is valid but the current state forbids it (e.g. still running, no force)."""


class CorruptRecord(KataError):
    """A state record could not be read (truncated, not JSON, wrong shape)."""


class StateWriteError(KataError):
    """A record could not be written (state file system full or read-only); the file on disk
    is the previous one, never half of the new one."""


class LockTimeout(KataError):
    """Another operation holds the sandbox lock for longer than we wait."""


class HookError(KataError):
    """An OCI hook failed, timed out or could not be run."""


class CgroupError(KataError):
    """A cgroup path could not be created or removed."""


class HypervisorError(KataError):
    """libvirt / the VMM refused or failed an operation."""


class AgentError(KataError):
    """The agent inside the guest could not be reached or returned an error."""


class ImageError(KataError):
    """The guest kernel or initrd could not be found or built."""
