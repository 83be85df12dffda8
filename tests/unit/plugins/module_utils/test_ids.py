# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The contract's ID grammar: what is accepted and what is refused (and named)."""

from __future__ import annotations

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import validate_id

GOOD = ['a', 'A', '0', 'web-1', 'pod_1.2+x', 'x' * 128, '9abc', 'a..b', 'a-']

BAD = [
    '../x',
    'a/b',
    '.hidden',
    '',
    'x' * 129,
    'caf\u00e9',          # non-ASCII letter
    '\u0661\u0662',       # non-ASCII digits (Arabic-Indic) that \d would match without re.ASCII
    'abc\n',              # trailing newline ('$' alone would accept it)
    '-leading-dash',
    '_leading',
    'sp ace',
    'a\x00b',
    'a:b',
    '..',
]


@pytest.mark.parametrize('value', GOOD)
def test_valid_ids_are_returned_unchanged(value):
    assert validate_id(value, 'sandbox') == value


@pytest.mark.parametrize('value', BAD)
def test_invalid_ids_are_refused_naming_the_value(value):
    with pytest.raises(InvalidArgument) as info:
        validate_id(value, 'sandbox')
    assert repr(value) in str(info.value)
    assert 'sandbox' in str(info.value)


@pytest.mark.parametrize('value', [None, 12, b'abc', ['a']])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidArgument) as info:
        validate_id(value)
    assert repr(value) in str(info.value)


def test_default_kind_in_message_is_container():
    with pytest.raises(InvalidArgument, match='container ID'):
        validate_id('a/b')
