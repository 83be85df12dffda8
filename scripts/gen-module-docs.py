#!/usr/bin/env python
# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render every module's documentation to docs/modules/<module>.md (plus an index).

The pages come from ``ansible-doc --json`` (so doc fragments are merged exactly as Ansible
merges them); the modules' DOCUMENTATION/EXAMPLES/RETURN stay the single source.

    .venv/bin/python scripts/gen-module-docs.py            # (re)write docs/modules/
    .venv/bin/python scripts/gen-module-docs.py --check    # exit 1 when docs/modules/ is stale

ansible-doc is taken from the directory of the running Python (a venv), else from PATH. The
collection is made visible through a temporary ansible_collections/kata/runtime symlink, so
nothing has to be installed first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE, NAME = 'kata', 'runtime'
COLLECTION = '%s.%s' % (NAMESPACE, NAME)
OUT_DIR = os.path.join(ROOT, 'docs', 'modules')


# --- Ansible markup -> Markdown -------------------------------------------------------------

def _option_ref(value):
    # O(name), O(name=value), RV(a.b=c), O(ignore:...); a leading "plugin:" part is dropped
    value = value.split(':', 1)[1] if re.match(r'^[\w.]+#\w+:', value) else value
    return '`%s`' % value.replace('ignore:', '')


MARKUP = [
    (re.compile(r'\bO\(([^)]+)\)'), lambda m: _option_ref(m.group(1))),
    (re.compile(r'\bRV\(([^)]+)\)'), lambda m: _option_ref(m.group(1))),
    (re.compile(r'\bV\(([^)]*)\)'), lambda m: '`%s`' % m.group(1)),
    (re.compile(r'\bE\(([^)]+)\)'), lambda m: '`%s`' % m.group(1)),
    (re.compile(r'\bC\(([^)]*)\)'), lambda m: '`%s`' % m.group(1)),
    (re.compile(r'\bI\(([^)]+)\)'), lambda m: '*%s*' % m.group(1)),
    (re.compile(r'\bB\(([^)]+)\)'), lambda m: '**%s**' % m.group(1)),
    (re.compile(r'\bU\(([^)]+)\)'), lambda m: '<%s>' % m.group(1)),
    (re.compile(r'\bL\(([^,)]+),\s*([^)]+)\)'), lambda m: '[%s](%s)' % (m.group(1), m.group(2))),
    (re.compile(r'\bM\(([^)]+)\)'), lambda m: _module_link(m.group(1))),
    (re.compile(r'\bP\(([^)]+)\)'), lambda m: '`%s`' % m.group(1).split('#')[0]),
    (re.compile(r'\bHORIZONTALLINE\b'), lambda m: '\n---\n'),
]


def _module_link(fqcn):
    prefix = COLLECTION + '.'
    if fqcn.startswith(prefix):
        return '[%s](%s.md)' % (fqcn, fqcn[len(prefix):])
    return '`%s`' % fqcn


def markup(text):
    text = str(text)
    for pattern, repl in MARKUP:
        text = pattern.sub(repl, text)
    return text


def paragraphs(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [markup(item) for item in value]
    return [markup(value)]


def cell(value):
    """Text safe inside a Markdown table cell."""
    return ' '.join(value.split()).replace('|', '\\|')


def _yaml_value(value):
    return json.dumps(value, sort_keys=True)


# --- page sections --------------------------------------------------------------------------

def option_rows(options, prefix=''):
    rows = []
    for name in sorted(options):
        spec = options[name] or {}
        kind = spec.get('type', 'str')
        if kind == 'list' and spec.get('elements'):
            kind = 'list / elements=%s' % spec['elements']
        facts = ['`%s`' % kind]
        if spec.get('required'):
            facts.append('**required**')
        if spec.get('aliases'):
            facts.append('aliases: %s' % ', '.join('`%s`' % a for a in spec['aliases']))
        text = '<br>'.join(cell(p) for p in paragraphs(spec.get('description')))
        if spec.get('choices'):
            choices = spec['choices']
            if isinstance(choices, dict):
                choices = list(choices)
            text += '<br>Choices: %s' % ', '.join(
                ('**`%s`** (default)' if c == spec.get('default') else '`%s`') % c for c in choices)
        elif 'default' in spec and spec['default'] is not None:
            text += '<br>Default: `%s`' % cell(_yaml_value(spec['default']))
        rows.append('| %s%s | %s | %s |' % (prefix, '**%s**' % name, '<br>'.join(facts), text))
        if spec.get('suboptions'):
            rows.extend(option_rows(spec['suboptions'], prefix=prefix + '&nbsp;&nbsp;&nbsp;&nbsp;'))
    return rows


def return_rows(values, prefix=''):
    rows = []
    for name in sorted(values):
        spec = values[name] or {}
        kind = spec.get('type', '')
        if kind == 'list' and spec.get('elements'):
            kind = 'list / elements=%s' % spec['elements']
        text = '<br>'.join(cell(p) for p in paragraphs(spec.get('description')))
        if spec.get('returned'):
            text += '<br>Returned: %s' % cell(markup(spec['returned']))
        if 'sample' in spec:
            text += '<br>Sample: `%s`' % cell(_yaml_value(spec['sample']))
        rows.append('| %s**%s** | `%s` | %s |' % (prefix, name, kind, text))
        if spec.get('contains'):
            rows.extend(return_rows(spec['contains'], prefix=prefix + '&nbsp;&nbsp;&nbsp;&nbsp;'))
    return rows


def attribute_rows(attributes):
    rows = []
    for name in sorted(attributes):
        spec = attributes[name] or {}
        text = '<br>'.join(cell(p) for p in paragraphs(spec.get('description')))
        details = paragraphs(spec.get('details'))
        if details:
            text += '<br>' + '<br>'.join(cell(p) for p in details)
        if spec.get('membership'):
            text += '<br>Action groups: %s' % ', '.join('`%s`' % g for g in spec['membership'])
        rows.append('| %s | %s | %s |' % (name, spec.get('support', ''), text))
    return rows


def render(fqcn, data):
    doc = data['doc']
    out = ['<!-- Generated by scripts/gen-module-docs.py from the module\'s documentation; do not edit. -->',
           '',
           '# %s — %s' % (fqcn, markup(doc.get('short_description', ''))),
           '']
    if doc.get('version_added'):
        out += ['*Added in version %s of %s.*' % (doc['version_added'], COLLECTION), '']
    out += ['## Synopsis', '']
    out += ['- %s' % p for p in paragraphs(doc.get('description'))]
    out.append('')
    if doc.get('requirements'):
        out += ['## Requirements', '', 'The below requirements are needed on the host that executes this module.', '']
        out += ['- %s' % markup(r) for r in doc['requirements']]
        out.append('')
    if doc.get('options'):
        out += ['## Parameters', '', '| Parameter | Type | Comments |', '| --- | --- | --- |']
        out += option_rows(doc['options'])
        out.append('')
    if doc.get('attributes'):
        out += ['## Attributes', '', '| Attribute | Support | Description |', '| --- | --- | --- |']
        out += attribute_rows(doc['attributes'])
        out.append('')
    if doc.get('notes'):
        out += ['## Notes', '']
        out += ['- %s' % p for p in paragraphs(doc['notes'])]
        out.append('')
    if doc.get('seealso'):
        out += ['## See also', '']
        for ref in doc['seealso']:
            if 'module' in ref:
                line = '- %s' % _module_link(ref['module'])
            elif 'link' in ref:
                line = '- [%s](%s)' % (ref.get('name', ref['link']), ref['link'])
            elif 'ref' in ref:
                line = '- %s' % ref.get('name', ref['ref'])
            else:
                continue
            if ref.get('description'):
                line += ': %s' % markup(ref['description'])
            out.append(line)
        out.append('')
    if data.get('examples'):
        out += ['## Examples', '', '```yaml', data['examples'].strip('\n'), '```', '']
    if data.get('return'):
        out += ['## Return values', '', '| Key | Type | Description |', '| --- | --- | --- |']
        out += return_rows(data['return'])
        out.append('')
    if doc.get('author'):
        authors = doc['author'] if isinstance(doc['author'], list) else [doc['author']]
        out += ['## Authors', '']
        out += ['- %s' % a for a in authors]
        out.append('')
    return '\n'.join(out)


def render_index(names, docs):
    out = ['<!-- Generated by scripts/gen-module-docs.py; do not edit. -->', '',
           '# %s modules' % COLLECTION, '',
           'Regenerate with `.venv/bin/python scripts/gen-module-docs.py` after changing a module\'s documentation.', '',
           '| Module | Description |', '| --- | --- |']
    for name in names:
        fqcn = '%s.%s' % (COLLECTION, name)
        out.append('| [%s](%s.md) | %s |' % (fqcn, name, cell(markup(docs[fqcn]['doc'].get('short_description', '')))))
    out.append('')
    return '\n'.join(out)


# --- running ansible-doc --------------------------------------------------------------------

def module_names():
    folder = os.path.join(ROOT, 'plugins', 'modules')
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith('.py') and not f.startswith('_'))


def ansible_doc_binary():
    local = os.path.join(os.path.dirname(sys.executable), 'ansible-doc')
    if os.access(local, os.X_OK):
        return local
    found = shutil.which('ansible-doc')
    if not found:
        sys.exit('ansible-doc not found: run with the Python of a venv that has ansible-core')
    return found


def load_docs(names):
    with tempfile.TemporaryDirectory() as tmp:
        parent = os.path.join(tmp, 'ansible_collections', NAMESPACE)
        os.makedirs(parent)
        os.symlink(ROOT, os.path.join(parent, NAME))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tmp, ANSIBLE_NOCOLOR='1')
        cmd = [ansible_doc_binary(), '--json', '-t', 'module'] + ['%s.%s' % (COLLECTION, n) for n in names]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        sys.exit('ansible-doc failed (rc=%d):\n%s' % (proc.returncode, proc.stderr))
    docs = json.loads(proc.stdout)
    missing = ['%s.%s' % (COLLECTION, n) for n in names if '%s.%s' % (COLLECTION, n) not in docs]
    if missing:
        sys.exit('ansible-doc returned no documentation for: %s\n%s' % (', '.join(missing), proc.stderr))
    return docs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--check', action='store_true', help='exit 1 when docs/modules/ is not up to date')
    args = parser.parse_args()

    names = module_names()
    docs = load_docs(names)
    pages = {'%s.md' % n: render('%s.%s' % (COLLECTION, n), docs['%s.%s' % (COLLECTION, n)]) for n in names}
    pages['README.md'] = render_index(names, docs)

    existing = set(f for f in os.listdir(OUT_DIR) if f.endswith('.md')) if os.path.isdir(OUT_DIR) else set()
    stale = sorted(existing - set(pages))
    changed = []
    for filename, text in sorted(pages.items()):
        path = os.path.join(OUT_DIR, filename)
        try:
            with open(path, encoding='utf-8') as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current != text:
            changed.append(filename)
    if args.check:
        if changed or stale:
            print('docs/modules/ is out of date: %s' % ', '.join(changed + stale))
            print('run: .venv/bin/python scripts/gen-module-docs.py')
            return 1
        print('docs/modules/ is up to date (%d modules)' % len(names))
        return 0
    os.makedirs(OUT_DIR, exist_ok=True)
    for filename in changed:
        with open(os.path.join(OUT_DIR, filename), 'w', encoding='utf-8') as handle:
            handle.write(pages[filename])
    for filename in stale:
        os.unlink(os.path.join(OUT_DIR, filename))
    print('docs/modules/: %d written, %d removed, %d modules' % (len(changed), len(stale), len(names)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
