# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile input, property-based: every module's argument spec against generated values.

Each example gets a temp host of its own (as in test_lifecycle_modules.py: a state root, a temp
directory as a cgroup v2 mount, fake boot files, libvirt's ``test:///default``), a world planted
in it with the real core (records, a dead sandbox, a dangling mapping, a corrupt record, and on
demand symlinks into a canary directory planted in the state root and the cgroup mount), then
one module call with generated arguments, a generated config.yaml and, for kata_container, a
generated bundle config.json. The properties:

- the call exits through ``exit_json``/``fail_json`` with valid JSON: never a traceback;
- a failure says ``failed: true``, ``changed: false`` (kata_prune: unless items were removed)
  and a message that names the offending value or its key (or the object in the way);
- nothing outside the state root and the cgroup mount changes, ever (the canary, the boot
  files, the hooks, the bundle, the config file), and libvirt's domain list is unchanged;
- a refusal, a check-mode run and an info module change nothing at all, inside either;
- what kata_sandbox accepts it can also delete: ``state=absent force=true`` after a successful
  create leaves zero residue; and no planted link or file makes a forced delete impossible;
- check mode and a real run agree on what they refuse.

Options are drawn mostly valid, with up to three of them (or options not given) hostile: NUL
bytes, newlines, very long strings, '..', absolute and relative paths, symlinks, unicode, huge
integers (10**400), floats, booleans, nested dicts and lists where strings are expected (see
hostile_strategies.py), so that examples reach the code behind the first refusal too.
Known bugs are kept as explicit ``@example``s on the property they break.

No example boots a VM: ``running``/``paused`` sandboxes are only planned (check mode), and a
container needs a running sandbox, which never exists here. kata_check and kata_guest_image run
in check mode only, with an image directory that does not exist, so nothing is built.

test:///default keeps its domains only while a connection to it is open in this process: the
``lab`` fixture holds one for the whole module, so whatever a module defines, starts, changes,
destroys or undefines through its own connection shows in the lab's domain list (compared
before and after each example, definitions included). The lab defines one domain named with our
prefix but without our metadata, kata-unit-stranger, next to the driver's own ``test``: neither
may ever change. A module that talked to another URI, or to the same URI from another process,
could not be seen this way: the strategies never hand out a URI other than test:///default or
one that cannot connect, and the harness refuses to run a call whose config would load with
another URI or with a state root or cgroup root outside the example's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.kata.runtime.plugins.module_utils.kata import container as ctr
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.config import Config, load_config
from ansible_collections.kata.runtime.plugins.module_utils.kata.ids import ID_PATTERN
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import ContainerRecord
from ansible_collections.kata.runtime.plugins.module_utils.kata.runtime import Runtime
from ansible_collections.kata.runtime.plugins.modules import (
    kata_check,
    kata_container,
    kata_container_info,
    kata_guest_image,
    kata_prune,
    kata_sandbox,
    kata_sandbox_info,
    kata_template,
)
from ansible_collections.kata.runtime.tests.unit.plugins.modules import hostile_strategies as hs
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument as HypothesisInvalidArgument

libvirt = pytest.importorskip('libvirt')

# Hypothesis keeps caches (not examples: database=None below) in a directory of its own; put it
# in the repository's .cache/ (ignored by git, removed by make clean) rather than the cwd.
os.environ.setdefault('HYPOTHESIS_STORAGE_DIRECTORY', os.path.join(
    os.path.dirname(os.path.realpath(__file__)), *(['..'] * 4 + ['.cache', 'hypothesis'])))

# Deterministic (CI reruns find the same examples), no example database in the repository, no
# deadline (a module run forks hooks and talks to libvirt), a modest number of examples per
# property (set with @hostile(n) from what one example costs): the file runs in about 25 s on
# 2 cores once every property passes.
settings.register_profile(
    'kata-hostile',
    deadline=None,
    max_examples=50,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PROFILE = settings.get_profile('kata-hostile')
# Looking for more: KATA_HOSTILE_SCALE=10 runs ten times the examples; KATA_HOSTILE_GENERATE_ONLY=1
# skips the explicit examples (known bugs, which otherwise stop a property before it generates).
if os.environ.get('KATA_HOSTILE_GENERATE_ONLY'):
    PROFILE = settings(PROFILE, phases=[Phase.generate, Phase.shrink, Phase.explain])
SCALE = float(os.environ.get('KATA_HOSTILE_SCALE', '1'))


def hostile(max_examples):
    """The profile, with a number of examples that fits what one example costs."""
    return settings(PROFILE, max_examples=max(1, int(max_examples * SCALE)))


OMIT = hs.OMIT
ID_RE = re.compile(ID_PATTERN, re.ASCII)
# Directories of an example that a module may change (state roots and cgroup mounts the
# strategies can name); everything else in the example must never change.
ZONES = ('run', 'run2', 'cgroup', 'cgroup2')
# What a Python exception says when it leaks into a message instead of a refusal.
LEAKED_EXCEPTION = re.compile(
    r'Traceback|object has no attribute|unhashable type|index out of range|not subscriptable|'
    r'positional argument|unsupported operand|embedded null byte|maximum recursion|'
    r'object is not iterable')
MAX_MSG = 200000


# ---------------------------------------------------------------------------------------------
# the lab (shared) and one example's host

class Lab:
    """The base temp directory and the libvirt connection that keeps test:///default's state."""

    def __init__(self, base):
        self.base = str(base)
        # a second canary, next to the examples' directories rather than in one
        self.canary = os.path.join(self.base, 'outer-canary')
        os.makedirs(os.path.join(self.canary, 'empty'))
        with open(os.path.join(self.canary, 'file'), 'w') as f:
            f.write('outer canary\n')
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.conn = libvirt.open('test:///default')
        # a domain with our prefix that is not ours (no kata metadata): never to be touched
        xml = self.conn.lookupByName('test').XMLDesc(0)
        xml = re.sub(r'<uuid>[^<]*</uuid>', '', xml).replace('<name>test</name>', '<name>kata-unit-stranger</name>')
        self.stranger = self.conn.defineXML(xml)

    def domains(self):
        """Every domain: name, UUID, state, persistence and a digest of its whole definition."""
        out = []
        for dom in self.conn.listAllDomains(0):
            xml = hashlib.sha256(dom.XMLDesc(0).encode('utf-8')).hexdigest()
            out.append((dom.name(), dom.UUIDString(), tuple(dom.state()), dom.isPersistent(), xml))
        return sorted(out)

    def close(self):
        with contextlib.suppress(libvirt.libvirtError):
            self.stranger.undefine()
        self.conn.close()


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    # On a tmpfs where there is one: every record write is fsynced, which on a disk makes an
    # example ten times slower. The directory is ours and goes at the end.
    shm = None
    if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK):
        shm = tempfile.mkdtemp(prefix='kata-hostile-', dir='/dev/shm')
    lab = Lab(shm or tmp_path_factory.mktemp('hostile'))
    try:
        yield lab
    finally:
        lab.close()
        if shm:
            shutil.rmtree(shm, ignore_errors=True)


HOOK_SCRIPTS = {'ok.sh': ('exit 0', 0o755), 'fail.sh': ('echo boom >&2; exit 3', 0o755),
                'noexec.sh': ('exit 0', 0o644)}
# Symlinks, files and directories planted in the state root and the cgroup mount, on demand.
PLANTS = ('link-sandbox-dir', 'link-record', 'link-container-record', 'link-mapping', 'link-lock',
          'link-shared', 'link-sock', 'link-bundles', 'link-cgroup', 'file-cgroup', 'file-mappings')


def tree(root):
    """{relative path: what it is} for everything under ``root``; links are never followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ('link', os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ('dir', st_.st_mode, st_.st_uid, st_.st_gid)
            elif stat.S_ISREG(st_.st_mode):
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ('file', st_.st_mode, st_.st_uid, st_.st_gid, digest)
            else:
                out[rel] = ('other', st_.st_mode)
    return out


def in_zone(rel):
    return rel.split(os.sep, 1)[0] in ZONES


def bookkeeping(rel, entry):
    """One of a state root's own directories: what the store creates on demand and keeps."""
    parts = rel.split(os.sep)
    if parts[0] not in ('run', 'run2') or entry[0] != 'dir':
        return False
    return len(parts) == 1 or (len(parts) == 2 and parts[1] in ('sandboxes', 'sock', 'mappings', 'locks', 'cgroups'))


def diff(before, after, keep=lambda rel, entry: True):
    changed = {}
    for rel in set(before) | set(after):
        if before.get(rel) != after.get(rel):
            entry = after.get(rel) or before.get(rel)
            if keep(rel, entry):
                changed[rel] = (before.get(rel), after.get(rel))
    return changed


class Example:
    """One example's host: a temp tree, a world planted in it, and a config file."""

    def __init__(self, lab, plants=(), config=None, fmt='yaml', spec=None):
        self.lab = lab
        self.root = tempfile.mkdtemp(prefix='ex-', dir=lab.base)
        try:
            self._build(plants, config, fmt, spec)
        except BaseException:
            self.close()
            raise

    def path(self, rel):
        return os.path.join(self.root, rel)

    def _write(self, rel, data, mode=0o644):
        path = self.path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data if isinstance(data, bytes) else data.encode('utf-8'))
        os.chmod(path, mode)
        return path

    def _build(self, plants, config, fmt, spec):
        self._write('cgroup/cgroup.controllers', 'cpu memory pids\n')
        self._write('image/vmlinux', 'kernel')
        self._write('image/kata-initrd.img', 'initrd')
        os.makedirs(self.path('rootfs/bin'))
        for name, (body, mode) in HOOK_SCRIPTS.items():
            self._write('hooks/' + name, '#!/bin/sh\n%s\n' % body, mode)
        # the canary: outside every root, reachable only through planted links and '..'
        self._write('canary/file', 'canary\n')
        self._write('canary/sub/deeper/file', 'deeper\n')
        os.makedirs(self.path('canary/empty'))
        self._write('canary/secret.json', json.dumps({'version': 1, 'id': 'linked', 'state': 'stopped',
                                                      'domain': 'kata-unit-linked'}))
        os.makedirs(self.path('links'))
        for name, target in (('to-canary', '../canary'), ('to-rootfs', '../rootfs'), ('loop', 'loop'),
                             ('dangling', '../nonexistent'), ('to-ok', '../hooks/ok.sh'), ('to-run', '../run')):
            os.symlink(target, self.path('links/' + name))
        self._write('bundle/config.json', hs.render_spec(hs.materialize(spec or hs.base_spec(), self.root)))
        os.symlink('../rootfs', self.path('bundle/rootfs-rel'))
        base = hs.materialize(hs.base_config(), self.root)
        doc = base if config is None else hs.materialize(config, self.root)
        self._write('config.yaml', hs.render_config(doc, fmt))
        self._plant(Config(base), plants)

    # -- the world ------------------------------------------------------------------------

    def _plant(self, cfg, plants):
        rt = Runtime(cfg)
        self.rt = rt
        store = rt.store

        def sandbox(sid, state, labels):
            # what kata_sandbox state=stopped makes; a 'running' one whose VM is gone is dead
            rec = sbx.create(rt, sid, sbx.settings_from(cfg, {'labels': labels}), boot=False)
            if state != rec.state:
                rec.state = state
                store.save_sandbox(rec)
            with store.lock(sid):  # the lock file a real run leaves
                pass

        def container(sid, cid, status):
            settings_ = ctr.settings_from({'rootfs': self.path('rootfs'), 'command': ['/bin/sh']})
            rec = ContainerRecord.new(sid, cid, settings_, status=status, created_at='2026-01-01T00:00:00Z', pid=7)
            rec.cgroups_paths = rt.cgroups.create('', cid)
            store.save_container(rec)
            store.set_mapping(cid, sid)

        sandbox('sb', 'stopped', {'tenant': 'acme'})
        container('sb', 'c1', 'stopped')
        sandbox('dead', 'running', {'tenant': 'other'})  # its VM is gone: dead
        container('dead', 'c2', 'running')
        store.set_mapping('ghost', 'nowhere')
        self._write('run/sandboxes/bad/sandbox.json', '{"id": "bad", "trunc', 0o600)
        os.makedirs(self.path('cgroup/kata-unit/leftover'))

        canary = self.path('canary')
        links = {
            'link-sandbox-dir': [('run/sandboxes/evil', canary)],
            'link-record': [('run/sandboxes/linked/sandbox.json', self.path('canary/secret.json'))],
            'link-container-record': [('run/sandboxes/sb/containers/evilc.json', self.path('canary/secret.json'))],
            'link-mapping': [('run/mappings/evilmap', self.path('canary/file'))],
            'link-lock': [('run/locks/dead.lock', self.path('canary/file'))],
            'link-shared': [('run/sandboxes/dead/shared', canary)],
            'link-sock': [(os.path.relpath(store.agent_socket('dead'), self.root), self.path('canary/file'))],
            'link-bundles': [('run/sandboxes/sb/bundles', canary)],
            'link-cgroup': [('cgroup/kata-unit/evil', canary), ('cgroup/evil-parent', canary)],
        }
        for plant in plants:
            for rel, target in links.get(plant, []):
                path = self.path(rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.unlink(path)
                os.symlink(target, path)
        if 'file-cgroup' in plants:
            self._write('cgroup/kata-unit/afile', 'not a cgroup\n')
        if 'file-mappings' in plants:
            shutil.rmtree(self.path('run/mappings'))
            self._write('run/mappings', 'not a directory\n', 0o600)

    # -- running a module -----------------------------------------------------------------

    def args(self, options):
        """Module arguments: the options (OMIT dropped) with the example's paths filled in; the
        example's config file unless the options name another."""
        out = {k: v for k, v in options.items() if v is not OMIT}
        out.setdefault('config', hs.D + '/config.yaml')
        out = hs.materialize(out, self.root)
        self._refuse_to_reach_the_host(out)
        return out

    def _refuse_to_reach_the_host(self, args):
        """Guard of the harness itself: a config that loads must keep this example's roots and
        a test:// URI (the module is then run; otherwise the strategies are wrong)."""
        path = args['config']
        if not isinstance(path, str):
            assert not os.path.exists(str(path)), path
            return
        path = os.path.expanduser(os.path.expandvars(path))
        assert path != '/etc/kata-runtime/config.yaml'
        root = args.get('runtime_root')
        if isinstance(root, str):
            root = os.path.expanduser(os.path.expandvars(root))
        try:
            cfg = load_config(path, overrides={'state_root': root if isinstance(root, str) else None})
        except Exception:  # refused (or a crash the module run will show): nothing is touched
            return
        for where in (cfg.state_root, cfg.cgroup_root):
            assert os.path.realpath(where).startswith(self.root + os.sep), (where, args)
        assert cfg.libvirt_uri.startswith('test:///'), args

    def snapshot(self):
        """(the example's tree, (libvirt's domains, the outer canary's tree))."""
        return tree(self.root), (self.lab.domains(), tree(self.lab.canary))

    def run(self, module, args, check_mode=False, diff_mode=False):
        args = dict(args)
        if check_mode:
            args['_ansible_check_mode'] = True
        if diff_mode:
            args['_ansible_diff'] = True
        out = io.StringIO()
        with patch_module_args(args), contextlib.redirect_stdout(out):
            with pytest.raises(SystemExit):
                module.main()
        text = out.getvalue()
        try:
            result = json.loads(text)
        except ValueError:
            raise AssertionError('module output is not JSON: %r' % text[:2000]) from None
        assert isinstance(result, dict), result
        assert 'exception' not in result, result['exception']
        with contextlib.suppress(HypothesisInvalidArgument):  # outside a @given test: no statistics
            event('%s %s' % (module.__name__.rsplit('.', 1)[-1], outcome(result)))
        return result

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# the checks every call gets

def outcome(result):
    """A short label of how a call ended, for ``--hypothesis-show-statistics``."""
    if not result.get('failed'):
        return 'ok, changed' if result.get('changed') else 'ok'
    msg = re.sub(r'/\S*', '<path>', result.get('msg', ''))
    return 'failed: ' + re.sub(r"'[^']*'|\"[^\"]*\"", '<v>', msg)[:50]


def renders(value, depth=0):
    """Strings by which a message can name ``value`` (or a part of it)."""
    out = set()
    if depth > 4:
        return out
    if isinstance(value, str):
        if value.strip():
            out.update({value, value[:40], os.path.normpath(value) if '\x00' not in value else value})
        out.update({repr(value), repr(value)[:40]})
    elif isinstance(value, bool):
        out.update({str(value), str(value).lower()})
    elif isinstance(value, (int, float)):
        out.update({str(value), repr(value)})
    elif value is None:
        out.add('None')
    elif isinstance(value, dict):
        out.add(repr(value)[:40])
        for key, item in value.items():
            out.update(renders(key, depth + 1))
            out.update(renders(item, depth + 1))
    elif isinstance(value, list):
        out.add(repr(value)[:40])
        for item in value:
            out.update(renders(item, depth + 1))
    return {r for r in out if len(r) >= 2}


def check_failure(ex, out, args, may_change=False, config=None):
    """A failure: failed, changed false (unless ``may_change``), a bounded message that is no
    leaked Python exception and names what is wrong: a value or option given, the config
    file or one of its values, a planted object, or a path of the example."""
    assert out.get('failed') is True, out
    if not may_change:
        # (AnsibleModule's own refusals, from the argument spec, carry no 'changed' at all)
        assert out.get('changed', False) is False, out
    msg = out.get('msg')
    assert isinstance(msg, str) and msg.strip(), out
    assert len(msg) < MAX_MSG, 'message of %d characters' % len(msg)
    assert not LEAKED_EXCEPTION.search(msg), msg
    culprits = set()
    # the values as given, and as the argument spec converted them (0 -> '0', None -> '')
    # the option names (a refusal may name one that was not given, e.g. a missing selector)
    for key, value in list(args.items()) + list(out.get('invocation', {}).get('module_args', {}).items()):
        culprits.add(key)
        if key in args:
            culprits.update(renders(value))
    if config is not None:
        culprits.update(renders(hs.materialize(config, ex.root)))
        culprits.add('config file')
    culprits.update({ex.root} | set(hs.PLANTED_IDS))
    assert any(c in msg for c in culprits), 'the message names nothing given: %r (args %r)' % (msg, args)


def check_untouched(ex, before, after, zone_too):
    """Nothing outside the zones changed, nor libvirt's domains, nor the outer canary; with
    ``zone_too`` nothing at all (save the store's own directories)."""
    files_before, (domains_before, canary_before) = before
    files_after, (domains_after, canary_after) = after
    outside = diff(files_before, files_after, keep=lambda rel, entry: not in_zone(rel))
    assert not outside, 'changed outside the state root and the cgroup mount: %r' % outside
    assert domains_before == domains_after, 'libvirt domains changed'
    assert canary_before == canary_after, 'the canary next to the examples changed'
    if zone_too:
        inside = diff(files_before, files_after, keep=lambda rel, entry: not bookkeeping(rel, entry))
        assert not inside, 'changed: %r' % inside


def check_record_within_contract(rec):
    """A sandbox record as the contract allows it."""
    assert ID_RE.fullmatch(rec.id)
    for key in ('labels', 'annotations'):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in getattr(rec, key).items()), getattr(rec, key)
    for hooks in (rec.hooks or {}).values():
        for hook in hooks:
            assert os.path.isabs(hook['path']) and '\x00' not in hook['path'], hook
            assert all('\x00' not in a for a in hook['args']), hook
            assert hook['timeout'] is None or (isinstance(hook['timeout'], int) and 0 < hook['timeout'] <= 86400), hook


def seen_value(out, args, key, alias=None):
    """The value of option ``key`` as the module saw it (after the argument spec's conversions)."""
    seen = out.get('invocation', {}).get('module_args', {})
    if key in seen:
        return seen[key]
    return args.get(key, args.get(alias))


def effective_store(ex, args):
    """The Store the module used (None when its config does not load)."""
    root = args.get('runtime_root')
    try:
        cfg = load_config(args['config'], overrides={'state_root': root if isinstance(root, str) else None})
    except Exception:
        return None
    return Runtime(cfg).store


# ---------------------------------------------------------------------------------------------
# what each example is made of (the option tables are in hostile_strategies)

plants = st.sets(st.sampled_from(PLANTS), max_size=4)
configs = st.one_of(st.none(), st.none(), st.none(), hs.config_documents())
formats = st.sampled_from(['yaml', 'json'])
D = hs.D
NO_IMAGE = hs.NO_IMAGE


def calls(table, required=()):
    return hs.calls(table[0], table[1], required)


def plain(**options):
    """An explicit example's options (the world, config and format are the plain ones)."""
    return options


# ---------------------------------------------------------------------------------------------
# kata_sandbox

@hostile(100)
@given(options=calls(hs.SANDBOX, ('name',)), world=plants, config=configs, fmt=formats, check=st.booleans())
@example(options=plain(name='sb', runtime_root=D + '/config.yaml'), world=set(), config=None, fmt='yaml',
         check=False)
@example(options=plain(name='new', state='stopped', hooks={'poststop': [
    {'path': D + '/hooks/fail.sh', 'args': ['fail.sh', 'a\x00b'], 'timeout': hs.HUGE}]}),
    world=set(), config=None, fmt='yaml', check=False)
# bug: recreate deletes the sandbox (and its containers), then refuses the new settings
@example(options=plain(name='sb', state='stopped', recreate=True, vcpus=2, kernel=D + '/nonexistent/vmlinux'),
         world=set(), config=None, fmt='yaml', check=False)
@example(options=plain(name='sb', state='stopped', recreate=True, vcpus=2, cgroups_path='../../..'),
         world=set(), config=None, fmt='yaml', check=False)
def test_kata_sandbox(lab, options, world, config, fmt, check):
    with Example(lab, world, config, fmt) as ex:
        args = ex.args(options)
        # never a boot: a sandbox that should run is only planned
        check = check or args.get('state', 'running') not in ('stopped', 'absent')
        before = ex.snapshot()
        out = ex.run(kata_sandbox, args, check_mode=check)
        after = ex.snapshot()
        check_untouched(ex, before, after, zone_too=check or out.get('failed'))
        if out.get('failed'):
            check_failure(ex, out, args, config=config)
            return
        assert isinstance(out['actions'], list) and isinstance(out['sandbox'], dict), out
        sid = seen_value(out, args, 'name', 'id')
        assert ID_RE.fullmatch(sid), 'accepted sandbox ID %r' % (sid,)
        store = effective_store(ex, args)
        if check or args.get('state') == 'absent':
            if not check:
                assert store.load_sandbox(sid) is None
            return
        rec = store.load_sandbox(sid)
        check_record_within_contract(rec)
        # what was accepted can be deleted, whatever it holds, and nothing is left
        out = ex.run(kata_sandbox, dict(args, state='absent', force=True))
        assert not out.get('failed') and out['changed'] is True, out
        assert store.load_sandbox(sid) is None and store.get_mapping(sid) is None
        assert not os.path.lexists(store.lock_path(sid))
        if os.path.relpath(store.sandbox_dir(sid), ex.root) not in before[0]:  # it was new
            check_untouched(ex, before, ex.snapshot(), zone_too=True)


@hostile(50)
@given(options=calls(hs.SANDBOX, ('name',)), config=configs, fmt=formats)
# bugs: check mode plans a create that the real run refuses
@example(options=plain(name='new', cgroups_path='../../../etc'), config=None, fmt='yaml')
@example(options=plain(name='new', kernel=D + '/nonexistent/vmlinux'), config=None, fmt='yaml')
@example(options=plain(name='c1'), config=None, fmt='yaml')
# the lab's kata-unit-stranger: our prefix, not our domain
@example(options=plain(name='stranger'), config=None, fmt='yaml')
def test_kata_sandbox_check_mode_refuses_what_a_run_refuses(lab, options, config, fmt):
    """A dry run that says "would create" is a promise: the real run does not refuse the input.
    (The world is the plain one: planted links make a real run fail where a dry run never looks.)"""
    options = dict(options, state='stopped')
    with Example(lab, (), config, fmt) as ex:
        args = ex.args(options)
        before = ex.snapshot()
        planned = ex.run(kata_sandbox, args, check_mode=True)
        check_untouched(ex, before, ex.snapshot(), zone_too=True)
        done = ex.run(kata_sandbox, args)
        assert bool(planned.get('failed')) == bool(done.get('failed')), (
            'check mode: %r; real run: %r' % (planned.get('msg', planned.get('actions')),
                                              done.get('msg', done.get('actions'))))


# ---------------------------------------------------------------------------------------------
# kata_container

CONTAINER_SHAPES = st.sampled_from(['inline', 'bundle', 'inline', 'bundle', 'both'])


def shaped(options, shape):
    """Inline options or a bundle (both: AnsibleModule's mutual exclusion)."""
    if shape == 'inline':
        return {k: v for k, v in options.items() if k != 'bundle'}
    if shape == 'bundle':
        return {k: v for k, v in options.items() if k not in hs.CONTAINER_INLINE}
    return options


@hostile(100)
@given(options=calls(hs.CONTAINER, ('name',)), shape=CONTAINER_SHAPES, world=plants, config=configs, fmt=formats,
       spec=st.one_of(st.none(), hs.bundle_specs()), check=st.booleans())
# bug (oci.load_bundle): a config.json nested deeper than the JSON parser goes is a RecursionError
@example(options=plain(name='c9', sandbox='sb', bundle=D + '/bundle'), shape='bundle', world=set(), config=None,
         fmt='yaml', spec=hs.Raw(b'[' * 100000), check=True)
# bug: running on a stopped container deletes it, then finds its sandbox is not running
@example(options=plain(name='c1', state='running'), shape='inline', world=set(), config=None, fmt='yaml', spec=None,
         check=False)
def test_kata_container(lab, options, shape, world, config, fmt, spec, check):
    with Example(lab, world, config, fmt, spec=spec) as ex:
        args = ex.args(shaped(options, shape))
        before = ex.snapshot()
        out = ex.run(kata_container, args, check_mode=check)
        after = ex.snapshot()
        check_untouched(ex, before, after, zone_too=check or out.get('failed'))
        if out.get('failed'):
            check_failure(ex, out, args, config=config)
            return
        assert isinstance(out['actions'], list) and isinstance(out['container'], dict), out
        cid = seen_value(out, args, 'name', 'id')
        assert ID_RE.fullmatch(cid), 'accepted container ID %r' % (cid,)
        if args.get('state') == 'absent' and not check:
            assert effective_store(ex, args).get_mapping(cid) is None


@hostile(50)
@given(options=calls(hs.CONTAINER, ('name', 'sandbox')), shape=CONTAINER_SHAPES, config=configs, fmt=formats,
       spec=st.one_of(st.none(), hs.bundle_specs()))
# bugs: check mode plans a create that the real run refuses
@example(options=plain(name='c9', sandbox='sb', rootfs=D + '/rootfs', command=['x'], cgroups_path='../../..'),
         shape='inline', config=None, fmt='yaml', spec=None)
@example(options=plain(name='c9', sandbox='sb', rootfs=D + '/rootfs', command=['x'],
                       annotations={'io.kubernetes.cri.container-type': 'sandbox'}),
         shape='inline', config=None, fmt='yaml', spec=None)
def test_kata_container_check_mode_refuses_what_a_run_refuses(lab, options, shape, config, fmt, spec):
    """Check mode plans a create only for input a real run takes: here a real create then stops
    only at the one thing this host cannot give, a running sandbox."""
    options = dict(shaped(options, shape), state='created')
    with Example(lab, (), config, fmt, spec=spec) as ex:
        args = ex.args(options)
        planned = ex.run(kata_container, args, check_mode=True)
        if planned.get('failed') or not any(a.startswith('would create') for a in planned['actions']):
            return
        done = ex.run(kata_container, args)
        assert not done.get('failed') or 'containers need a running sandbox' in done['msg'], (
            'check mode: %r; real run: %r' % (planned['actions'], done['msg']))


# ---------------------------------------------------------------------------------------------
# forced deletion, whatever was planted

@hostile(30)
@given(world=plants, sid=st.sampled_from(['sb', 'dead', 'linked', 'bad', 'evil']), check=st.booleans())
# bugs: a planted symlink in place of a sandbox's lock file or its shared/ directory, or a file in
# place of mappings/, makes the sandbox undeletable (the link is refused, rightly, but the
# delete stops there instead of removing it without following it)
@example(world={'link-lock'}, sid='dead', check=False)
@example(world={'link-shared'}, sid='dead', check=False)
@example(world={'file-mappings'}, sid='sb', check=False)
def test_forced_delete_is_never_blocked_by_what_was_planted(lab, world, sid, check):
    """``state=absent force=true`` removes a sandbox whatever was planted in or next to it,
    follows no link out of the state root, and touches nothing outside it. (A symlink planted in
    place of a whole sandbox directory, 'evil', is not a sandbox: it may be refused; so may a
    file in place of the store's own mappings directory, with a message naming it.)"""
    with Example(lab, world) as ex:
        args = ex.args({'name': sid, 'state': 'absent', 'force': True})
        before = ex.snapshot()
        out = ex.run(kata_sandbox, args, check_mode=check)
        after = ex.snapshot()
        check_untouched(ex, before, after, zone_too=check or out.get('failed'))
        if sid == 'evil' and 'link-sandbox-dir' in world and out.get('failed'):
            check_failure(ex, out, args)
            return
        if 'file-mappings' in world and out.get('failed'):
            # a file where the store's own mappings directory belongs is refused, naming it, and
            # never replaced: a link or file there may be the operator's doing
            assert os.path.join('run', 'mappings') in out['msg'] and 'not a directory' in out['msg'], out['msg']
            return
        assert not out.get('failed'), out['msg']
        if not check:
            assert not os.path.lexists(ex.rt.store.sandbox_dir(sid))
            assert not os.path.lexists(os.path.join(ex.rt.store.root, 'mappings', sid))


# ---------------------------------------------------------------------------------------------
# the info modules and kata_prune

@hostile(60)
@given(options=calls(hs.SANDBOX_INFO), world=plants, config=configs, fmt=formats, check=st.booleans())
@example(options=plain(query='(' * 3000 + '@' + ')' * 3000), world=set(), config=None, fmt='yaml', check=False)
@example(options=plain(query='ceil(`1e400`)'), world=set(), config=None, fmt='yaml', check=False)
@example(options=plain(runtime_root=D + '/config.yaml'), world=set(), config=None, fmt='yaml', check=False)
def test_kata_sandbox_info(lab, options, world, config, fmt, check):
    with Example(lab, world, config, fmt) as ex:
        args = ex.args(options)
        before = ex.snapshot()
        out = ex.run(kata_sandbox_info, args, check_mode=check)
        check_untouched(ex, before, ex.snapshot(), zone_too=True)
        if out.get('failed'):
            check_failure(ex, out, args, config=config)
            return
        assert out['changed'] is False and isinstance(out['corrupt'], list), out
        if not seen_value(out, args, 'query'):
            assert all(ID_RE.fullmatch(s['id']) for s in out['sandboxes']), out
            assert all(s['state'] != 'running' for s in out['sandboxes']), 'no VM runs here: %r' % out


@hostile(60)
@given(options=calls(hs.CONTAINER_INFO), world=plants, config=configs, fmt=formats, check=st.booleans())
@example(options=plain(query='[0:1:0]'), world=set(), config=None, fmt='yaml', check=False)
def test_kata_container_info(lab, options, world, config, fmt, check):
    with Example(lab, world, config, fmt) as ex:
        args = ex.args(options)
        before = ex.snapshot()
        out = ex.run(kata_container_info, args, check_mode=check)
        check_untouched(ex, before, ex.snapshot(), zone_too=True)
        if out.get('failed'):
            check_failure(ex, out, args, config=config)
            return
        assert out['changed'] is False and isinstance(out['corrupt'], list), out
        if not seen_value(out, args, 'query'):
            assert all(c['status'] != 'running' for c in out['containers']), 'no VM runs here: %r' % out


@hostile(60)
@given(options=calls(hs.PRUNE), world=plants, config=configs, fmt=formats, check=st.booleans())
# bugs: a state root (or its mappings/) that is a file is a NotADirectoryError traceback; a lock
# file that is a symlink makes prune fail as a whole with changed=false after deleting sandboxes
@example(options=plain(names=['sb'], runtime_root=D + '/config.yaml'), world=set(), config=None, fmt='yaml',
         check=False)
@example(options=plain(all=True, force=True), world={'file-mappings'}, config=None, fmt='yaml', check=False)
@example(options=plain(all=True, force=True), world={'link-lock'}, config=None, fmt='yaml', check=False)
def test_kata_prune(lab, options, world, config, fmt, check):
    with Example(lab, world, config, fmt) as ex:
        args = ex.args(options)
        store = effective_store(ex, args)
        known = set()
        if store is not None and os.path.isdir(os.path.join(store.root, 'sandboxes')):
            known = set(os.listdir(os.path.join(store.root, 'sandboxes')))
        before = ex.snapshot()
        out = ex.run(kata_prune, args, check_mode=check)
        after = ex.snapshot()
        # items that could not be removed do not stop the others: what was removed stays removed
        items_failed = out.get('failed') is True and 'could not be removed' in out.get('msg', '')
        check_untouched(ex, before, after, zone_too=check or (out.get('failed') is True and not items_failed))
        if out.get('failed') is True:
            check_failure(ex, out, args, may_change=items_failed, config=config)
            return
        assert set(out['deleted']) <= known, (out['deleted'], known)
        if not check:
            for sid in out['deleted']:
                assert not os.path.lexists(os.path.join(store.root, 'sandboxes', sid)), sid


# ---------------------------------------------------------------------------------------------
# kata_check and kata_guest_image: check mode only, nothing built, nothing touched

@hostile(10)
@given(options=calls(hs.CHECK), config=configs, fmt=formats)
def test_kata_check(lab, options, config, fmt):
    with Example(lab, (), config, fmt) as ex:
        args = ex.args(options)
        before = ex.snapshot()
        out = ex.run(kata_check, args, check_mode=True)
        check_untouched(ex, before, ex.snapshot(), zone_too=True)
        if out.get('failed') and 'kata_host' not in out:
            check_failure(ex, out, args, config=config)
            return
        assert isinstance(out['kata_host']['problems'], list) and out['changed'] is False, out


guest_image_configs = st.one_of(
    st.none(), hs.config_documents(image_dirs=st.sampled_from([NO_IMAGE, 'relative', '', NO_IMAGE + '\x00', 5])))


@hostile(40)
@given(options=calls(hs.GUEST_IMAGE), config=guest_image_configs, fmt=formats)
# bug (kata_guest_image): a NUL byte in dest is a ValueError traceback
@example(options=plain(dest=NO_IMAGE + '\x00'), config=None, fmt='yaml')
def test_kata_guest_image(lab, options, config, fmt):
    if config is None:  # the builder is never reached: the config's image_dir does not exist
        config = dict(hs.base_config(), image_dir=NO_IMAGE)
    with Example(lab, (), config, fmt) as ex:
        args = ex.args(options)
        image_dir = hs.materialize(NO_IMAGE, ex.root)
        before = ex.snapshot()
        out = ex.run(kata_guest_image, args, check_mode=True)
        check_untouched(ex, before, ex.snapshot(), zone_too=True)
        assert not os.path.exists(image_dir)
        if out.get('failed'):
            check_failure(ex, out, args, config=config)
            return
        assert isinstance(out['actions'], list) and isinstance(out['changed'], bool), out


# ---------------------------------------------------------------------------------------------
# config.yaml documents, alone: every module reads them first

MODULES = {'kata_sandbox': (kata_sandbox, {'name': 'new', 'state': 'stopped'}),
           'kata_container': (kata_container, {'name': 'c9', 'sandbox': 'sb', 'state': 'absent'}),
           'kata_sandbox_info': (kata_sandbox_info, {}),
           'kata_container_info': (kata_container_info, {}),
           'kata_prune': (kata_prune, {'names': ['nothing-matches']}),
           'kata_template': (kata_template, {'state': 'absent'})}
LAUGHS = b'vcpus:\n' + b''.join(b'  - &a%d [%s]\n' % (i, b', '.join([b'*a%d' % (i - 1) if i else b'lol'] * 9))
                                for i in range(8))


@hostile(60)
@given(module=st.sampled_from(sorted(MODULES)), config=hs.config_documents(), fmt=formats)
@example(module='kata_sandbox_info', config=hs.Raw(b'[' * 600), fmt='yaml')
@example(module='kata_sandbox_info', config=hs.Raw(b'a: !!int 1e400\n'), fmt='yaml')
@example(module='kata_sandbox_info', config=hs.Raw(LAUGHS), fmt='yaml')  # 9**8 'lol's by reference
@example(module='kata_sandbox', config=dict(hs.base_config(), state_root='//'), fmt='yaml')
def test_config_documents(lab, module, config, fmt):
    module, options = MODULES[module]
    with Example(lab, (), config, fmt) as ex:
        args = ex.args(options)
        before = ex.snapshot()
        out = ex.run(module, args)
        after = ex.snapshot()
        if out.get('failed'):
            check_untouched(ex, before, after, zone_too=True)
            check_failure(ex, out, args, config=config)
        else:
            check_untouched(ex, before, after, zone_too=module in (kata_sandbox_info, kata_container_info))
