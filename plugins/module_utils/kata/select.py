# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Selecting sandboxes and containers: names (globs), labels, status, JMESPath query.

Shared by the info modules and kata_prune so a selector means the same everywhere.
"""

from __future__ import annotations

import fnmatch

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument

try:
    import jmespath
except ImportError:  # only needed when a query is given
    jmespath = None


def name_matches(name, patterns):
    """True when ``name`` equals or glob-matches one of ``patterns`` (None = no filter)."""
    if patterns is None:
        return True
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def labels_match(item_labels, wanted):
    """True when every wanted label is present with the same value (None = no filter)."""
    if not wanted:
        return True
    item_labels = item_labels or {}
    return all(item_labels.get(k) == v for k, v in wanted.items())


def filter_items(items, names=None, labels=None, statuses=None, status_key='state'):
    """The items (public dicts) that pass every given filter, in order."""
    return [i for i in items
            if name_matches(i['id'], names)
            and labels_match(i.get('labels'), labels)
            and (not statuses or i.get(status_key) in statuses)]


def query(items, expression):
    """Apply a JMESPath expression to the list of items. Bad expressions name themselves."""
    if not expression:
        return items
    if jmespath is None:
        raise InvalidArgument('query %r needs the jmespath Python library on the target: pip install jmespath'
                              % expression)
    try:
        return jmespath.search(expression, items)
    except jmespath.exceptions.JMESPathError as err:
        raise InvalidArgument('invalid JMESPath query %r: %s' % (expression, err))
    except RecursionError:
        raise InvalidArgument('invalid JMESPath query %r: nested deeper than the parser can follow' % (expression,))
    except (ValueError, TypeError, ArithmeticError) as err:
        # jmespath lets these through for expressions it parses but cannot evaluate: a slice
        # step of 0, floor/ceil of infinity or NaN, contains() of a string and a number
        raise InvalidArgument('JMESPath query %r cannot be evaluated: %s' % (expression, err))


def ids_from_query(items, expression):
    """The IDs a query selects: it may return items (dicts with 'id') or IDs (strings)."""
    result = query(items, expression)
    if result is None:
        return []
    if not isinstance(result, list):
        result = [result]
    out = []
    for r in result:
        if isinstance(r, dict) and isinstance(r.get('id'), str):
            out.append(r['id'])
        elif isinstance(r, str):
            out.append(r)
        else:
            raise InvalidArgument('query %r must select sandboxes or their IDs, it returned %r' % (expression, r))
    return out
