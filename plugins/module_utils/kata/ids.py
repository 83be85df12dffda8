# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation of sandbox and container IDs (the contract's ID grammar)."""

from __future__ import annotations

import re

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument

ID_PATTERN = r'^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$'
_ID_RE = re.compile(ID_PATTERN, re.ASCII)


def validate_id(value, what='container'):
    """Return ``value`` if it is a valid sandbox/container ID, else raise InvalidArgument.

    IDs become file names and libvirt domain names, so nothing outside the grammar
    ``^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$`` is accepted (no '/', no leading '.', ASCII only).
    """
    if not isinstance(value, str):
        raise InvalidArgument('invalid %s ID %r: must be a string' % (what, value))
    # fullmatch: '$' alone would accept a trailing newline
    if not _ID_RE.fullmatch(value):
        raise InvalidArgument(
            'invalid %s ID %r: IDs must match %s (1-128 ASCII letters, digits, "_", ".", "+", "-", '
            'starting with a letter or digit)' % (what, value, ID_PATTERN))
    return value
