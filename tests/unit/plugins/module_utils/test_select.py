# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""select.py: names and globs, labels, statuses, JMESPath queries and the IDs they pick."""

from __future__ import annotations

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import select
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument

ITEMS = [
    {'id': 'web-1', 'state': 'running', 'labels': {'tenant': 'acme', 'tier': 'web'}, 'vcpus': 2},
    {'id': 'web-2', 'state': 'stopped', 'labels': {'tenant': 'other', 'tier': 'web'}, 'vcpus': 1},
    {'id': 'db-1', 'state': 'dead', 'labels': {'tenant': 'acme'}, 'vcpus': 4},
    {'id': 'bare', 'state': 'running', 'labels': None, 'vcpus': 1},
    {'id': 'c[1]', 'state': 'paused'},
]


def ids(items):
    return [i['id'] for i in items]


@pytest.mark.parametrize('name,patterns,expected', [
    ('web-1', None, True),
    ('web-1', [], False),
    ('web-1', ['web-1'], True),
    ('web-1', ['web-*'], True),
    ('web-1', ['web-?'], True),
    ('web-10', ['web-?'], False),
    ('Web-1', ['web-*'], False),
    ('db-1', ['web-*', 'db-*'], True),
    ('c[1]', ['c[1]'], True),
    ('c1', ['c[1]'], True),
    ('c[1]', ['c[[]1]'], True),
    ('x', ['[!a-w]'], True),
])
def test_name_matches(name, patterns, expected):
    """Exact names and fnmatch globs, case-sensitive; None means no filter, [] matches
    nothing; a literal bracket matches itself as well as the class it spells."""
    assert select.name_matches(name, patterns) is expected


@pytest.mark.parametrize('labels,wanted,expected', [
    ({'a': '1'}, None, True),
    ({'a': '1'}, {}, True),
    ({'a': '1', 'b': '2'}, {'a': '1'}, True),
    ({'a': '1'}, {'a': '1', 'b': '2'}, False),
    ({'a': '1'}, {'a': '2'}, False),
    (None, {'a': '1'}, False),
    (None, None, True),
    ({'a': ''}, {'a': ''}, True),
])
def test_labels_match(labels, wanted, expected):
    """Every wanted label with the same value (a subset match); None or {} means no filter."""
    assert select.labels_match(labels, wanted) is expected


def test_filter_items_combines_every_filter_in_order():
    """names, labels and statuses all apply together; the order of the items is kept."""
    assert ids(select.filter_items(ITEMS)) == ids(ITEMS)
    assert ids(select.filter_items(ITEMS, names=['web-*'])) == ['web-1', 'web-2']
    assert ids(select.filter_items(ITEMS, labels={'tenant': 'acme'})) == ['web-1', 'db-1']
    assert ids(select.filter_items(ITEMS, names=['*-1'], labels={'tier': 'web'})) == ['web-1']
    assert ids(select.filter_items(ITEMS, statuses=['running', 'paused'])) == ['web-1', 'bare', 'c[1]']
    assert ids(select.filter_items(ITEMS, names=['web-*'], statuses=['dead'])) == []
    containers = [{'id': 'x', 'status': 'stopped'}, {'id': 'y', 'status': 'running'}]
    assert ids(select.filter_items(containers, statuses=['running'], status_key='status')) == ['y']


def test_query_returns_items_unchanged_without_an_expression():
    """No expression (None or empty) returns the items themselves."""
    assert select.query(ITEMS, None) is ITEMS
    assert select.query(ITEMS, '') is ITEMS


def test_query_applies_jmespath():
    """A JMESPath expression over the list of items."""
    pytest.importorskip('jmespath')
    assert select.query(ITEMS, "[?state=='running'].id") == ['web-1', 'bare']
    assert select.query(ITEMS, 'length(@)') == len(ITEMS)


@pytest.mark.parametrize('expression', ['[?', 'foo[', '`{', '[?vcpus > ]'])
def test_query_refuses_a_bad_expression_naming_it(expression):
    """A JMESPath syntax error is InvalidArgument naming the expression, never a traceback."""
    pytest.importorskip('jmespath')
    with pytest.raises(InvalidArgument) as info:
        select.query(ITEMS, expression)
    assert repr(expression) in str(info.value)


def test_query_without_jmespath_says_what_to_install(monkeypatch):
    """Without the jmespath library a query fails saying what to install; no query, no need."""
    monkeypatch.setattr(select, 'jmespath', None)
    with pytest.raises(InvalidArgument, match='pip install jmespath'):
        select.query(ITEMS, '[].id')
    assert select.query(ITEMS, None) is ITEMS
    assert select.ids_from_query(ITEMS, None) == ids(ITEMS)


@pytest.mark.parametrize('expression,expected', [
    ("[?labels.tenant=='acme']", ['web-1', 'db-1']),
    ("[?labels.tenant=='acme'].id", ['web-1', 'db-1']),
    ('[0]', ['web-1']),
    ('[0].id', ['web-1']),
    ("[?id=='nope']", []),
    ('[?vcpus > `1`] | [0].missing', []),
    ('[]', ids(ITEMS)),
])
def test_ids_from_query_takes_items_or_ids(expression, expected):
    """A query may select items (dicts with an id), IDs, one of either, or nothing."""
    pytest.importorskip('jmespath')
    assert select.ids_from_query(ITEMS, expression) == expected


@pytest.mark.parametrize('expression', ['[].vcpus', '[].labels', 'length(@)', '[?id==`web-1`].{x: id}'])
def test_ids_from_query_refuses_what_is_not_a_sandbox(expression):
    """A query returning numbers, objects without an id or anything else is refused, naming
    the query and what it returned."""
    pytest.importorskip('jmespath')
    with pytest.raises(InvalidArgument) as info:
        select.ids_from_query(ITEMS, expression)
    assert repr(expression) in str(info.value) and 'must select' in str(info.value)
