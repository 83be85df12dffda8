# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""prune.py on the fakes: selectors, each kind of orphan, check mode, failures, and races
(a prune during a create, two prunes at once, two state roots sharing libvirt and cgroups).

Orphans are made the way they happen: by killing an operation at a chosen step (Killer), by
a VMM dying or a host rebooting, not by writing files by hand (except corrupt ones).
"""

from __future__ import annotations

import os
import threading

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import prune
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import Conflict, InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.store import Store
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.lifecycle_fakes import (
    Env,
    FakeHypervisor,
    Killed,
    Killer,
    reboot_host,
    residue,
    truthful,
)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='share.prepare mounts tmpfs: root only'),
              pytest.mark.usefixtures('quick_hooks')]


def snapshot(env, only_mine=False):
    """Everything prune could change: files and dirs under the state root (with contents),
    the VMs and their states, cgroup dirs, mounts. ``only_mine``: only the VMs naming this
    state root and the cgroup dirs this root's records list (for two roots sharing them)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(env.state_root):
        for d in dirnames:
            files[os.path.join(dirpath, d)] = None
        for f in filenames:
            path = os.path.join(dirpath, f)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as handle:
                    files[path] = handle.read()
            else:
                files[path] = 'special'
    found = residue(env.rt, env.hv, all_domains=not only_mine)
    cgroups = found.get('cgroups')
    if only_mine:
        records, dummy = env.rt.store.list_sandboxes()
        listed = [p for r in records for p in r.cgroups_paths]
        listed += [p for r in records for c in env.rt.store.list_containers(r.id)[0] for p in c.cgroups_paths]
        cgroups = sorted((p, os.path.isdir(p)) for p in listed)
    return files, found.get('domains'), cgroups, found.get('mounts')


def kill_at(env, monkeypatch, operation, when):
    """Run ``operation(env)`` and SIGKILL it at the first step ``when(step, done)`` picks."""
    killer = Killer(monkeypatch, env.hv, env.agents, at=when, root=env.root)
    with pytest.raises(Killed):
        operation(env)
    killer.disarm()
    monkeypatch.undo()
    return killer.killed_at


def prune_all(env, rt=None, **kw):
    rt = rt or env.fresh()
    return prune.prune(rt, prune.selected_ids(rt, select_all=True), force=True, **kw)


def kinds(result):
    return sorted((o['kind'], o['id']) for o in result['orphans_removed'])


# ---------------------------------------------------------------------------------------------
# selectors

def test_selected_ids_refuses_no_selector(env):
    """No names, labels, query or all: refused, saying why."""
    env.sandbox('sb', boot=False)
    with pytest.raises(InvalidArgument, match='selector'):
        prune.selected_ids(env.rt)
    with pytest.raises(InvalidArgument, match='selector'):
        prune.selected_ids(env.rt, names=[], labels={}, query='')


def test_selected_ids_by_names_labels_query_and_all(env):
    """Names and globs, labels, a JMESPath query over the live view, all=true (with corrupt
    records), each picking exactly its sandboxes."""
    env.sandbox('web-1', labels={'tenant': 'acme'})
    env.sandbox('web-2', boot=False, labels={'tenant': 'other'})
    env.sandbox('db-1', boot=False, labels={'tenant': 'acme'}, vcpus=2)
    env.rt.store.ensure_sandbox('broken')  # a directory without a record
    rt = env.rt
    assert prune.selected_ids(rt, names=['web-*']) == ['web-1', 'web-2']
    assert prune.selected_ids(rt, names=['db-1', 'nope']) == ['db-1']
    assert prune.selected_ids(rt, names=['b*']) == ['broken']
    assert prune.selected_ids(rt, labels={'tenant': 'acme'}) == ['db-1', 'web-1']
    assert prune.selected_ids(rt, names=['web-*'], labels={'tenant': 'acme'}) == ['web-1']
    assert prune.selected_ids(rt, query="[?state=='stopped'].id") == ['db-1', 'web-2']
    assert prune.selected_ids(rt, labels={'tenant': 'acme'}, query='[?vcpus > `1`]') == ['db-1']
    assert prune.selected_ids(rt, select_all=True) == ['broken', 'db-1', 'web-1', 'web-2']
    with pytest.raises(InvalidArgument, match=r'\[\?'):
        prune.selected_ids(rt, query='[?')


def test_prune_deletes_only_the_selection(env):
    """prune by labels: the selected sandboxes and their containers go, the rest untouched."""
    env.sandbox('acme-1', labels={'tenant': 'acme'})
    env.container('acme-1', 'c1')
    env.sandbox('acme-2', boot=False, labels={'tenant': 'acme'})
    env.sandbox('other', labels={'tenant': 'other'})
    env.container('other', 'c2')
    keep = env.rt.store.load_sandbox('other')
    result = prune.prune(env.rt, prune.selected_ids(env.rt, labels={'tenant': 'acme'}), force=True)
    assert sorted(result['deleted']) == ['acme-1', 'acme-2'] and result['failed'] == []
    assert [r.id for r in env.rt.store.list_sandboxes()[0]] == ['other']
    assert env.hv.ours() == {env.hv.domain_name('other'): 'running'}
    assert all(os.path.isdir(p) for p in keep.cgroups_paths)
    assert env.rt.store.get_mapping('c2') == 'other' and env.rt.store.get_mapping('c1') is None
    assert prune.prune(env.rt, prune.selected_ids(env.rt, labels={'tenant': 'acme'}), force=True)['deleted'] == []


def test_prune_without_force_keeps_sandboxes_with_running_containers(env):
    """prune without force: a sandbox whose containers run is reported failed (Conflict
    naming them), the others go."""
    env.sandbox('busy')
    env.container('busy', 'c1')
    env.sandbox('idle', boot=False)
    result = prune.prune(env.rt, ['busy', 'idle'])
    assert result['deleted'] == ['idle']
    assert [f['id'] for f in result['failed']] == ['busy'] and 'c1' in result['failed'][0]['reason']
    assert env.hv.domain_of('busy').state == 'running'


def test_prune_reports_a_failing_delete_and_goes_on(env):
    """libvirt failing the delete of one selected sandbox: it is reported with the reason, the
    others are deleted; a second prune finishes the job."""
    env.sandbox('a')
    env.sandbox('b')
    env.hv.fail('undefine', at=1)
    result = prune.prune(env.rt, ['a', 'b'], force=True, workers=1)
    assert len(result['deleted']) == 1 and len(result['failed']) == 1
    assert 'injected fault' in result['failed'][0]['reason']
    prune_all(env)
    assert env.residue() == {}


def test_prune_all_removes_what_a_create_killed_on_its_first_write_left(env, monkeypatch):
    """A sandbox directory without sandbox.json (ENOSPC or a kill on the first save): prune
    all=true selects it and removes it, zero residue."""
    kill_at(env, monkeypatch, lambda e: e.sandbox('sb'), lambda what, done: what.endswith('sandbox.json'))
    assert os.path.isdir(env.rt.store.sandbox_dir('sb'))
    result = prune_all(env)
    assert result['deleted'] == ['sb'] and result['failed'] == []
    assert env.residue() == {}


def test_prune_all_removes_a_corrupt_record(env):
    """An unreadable sandbox.json: prune all=true removes it with its VM, zero residue."""
    env.sandbox('sb')
    with open(os.path.join(env.rt.store.sandbox_dir('sb'), 'sandbox.json'), 'w') as f:
        f.write('not json')
    result = prune_all(env)
    assert result['deleted'] == ['sb'], result
    assert env.residue() == {}


# ---------------------------------------------------------------------------------------------
# orphans, each kind, made the way they happen

def test_dead_sandbox_is_an_orphan(env):
    """A sandbox whose VMM died (record expects a VM, none runs) is collected by any prune."""
    env.sandbox('sb')
    env.container('sb', 'c1')
    env.hv.crash(env.hv.domain_name('sb'))
    result = prune.prune(env.fresh(), [], force=True)
    assert ('sandbox_without_vm', 'sb') in kinds(result)
    assert env.residue() == {}


@pytest.mark.parametrize('flow', ['create', 'delete'])
def test_record_left_creating_or_deleting_by_a_killed_process_is_an_orphan(env, monkeypatch, flow):
    """A create killed once its VM booted (record 'creating') or a delete killed after marking
    the record 'deleting': nobody holds the lock, so prune collects it, zero residue."""
    if flow == 'create':
        kill_at(env, monkeypatch, lambda e: e.sandbox('sb'),
                lambda what, done: any(d.startswith('hv.create') for d in done))
        assert env.rt.store.load_sandbox('sb').state == 'creating'
    else:
        env.sandbox('sb')
        env.container('sb', 'c1')
        kill_at(env, monkeypatch, lambda e: sbx.delete(e.rt, 'sb', force=True),
                lambda what, done: any('sandbox.json' in d for d in done))
        assert env.rt.store.load_sandbox('sb').state == 'deleting'
    result = prune.prune(env.fresh(), [], force=True)
    assert ('sandbox_without_vm', 'sb') in kinds(result), result
    assert env.residue() == {}


def test_vm_without_record_is_an_orphan_only_in_its_own_root(env):
    """VMs of ours with no record: the one naming this state root is collected; one naming
    another root, and a running one naming none, are left alone."""
    mine = env.hv.add_orphan('lost', state_root=env.rt.store.root)
    theirs = env.hv.add_orphan('theirs', state_root='/run/other-kata')
    legacy = env.hv.add_orphan('legacy', state_root=None)
    foreign = env.hv.add_foreign('kata-unit-stranger')
    result = prune.prune(env.rt, [], force=True)
    assert kinds(result) == [('vm_without_state', mine)]
    assert env.hv.ours() == {theirs: 'running', legacy: 'running'}
    assert foreign in env.hv.domains


def test_dangling_mappings_are_orphans(env):
    """Mappings pointing at a missing sandbox, or at a container record that is gone, are
    collected; live ones stay."""
    env.sandbox('sb')
    env.container('sb', 'c1')
    env.container('sb', 'c2')
    env.rt.store.remove_container('sb', 'c1')
    env.rt.store.set_mapping('ghost', 'nowhere')
    result = prune.prune(env.fresh(), [], force=True)
    assert {('dangling_mapping', 'c1'), ('dangling_mapping', 'ghost')} <= set(kinds(result)), result
    assert env.rt.store.get_mapping('c2') == 'sb' and env.rt.store.get_mapping('sb') == 'sb'


def test_cgroup_dir_a_killed_container_create_made_is_an_orphan(env, monkeypatch):
    """A container create killed right after making its cgroup dir (before its record listed
    it): prune collects the dir; the sandbox's own dirs stay."""
    env.sandbox('sb')
    leaf = os.path.join(env.cgroup, 'kata-unit', 'c1')
    kill_at(env, monkeypatch, lambda e: e.container('sb', 'c1'), lambda what, done: os.path.isdir(leaf))
    assert os.path.isdir(leaf)
    result = prune.prune(env.fresh(), [], force=True)
    assert ('empty_cgroup', leaf) in kinds(result), result
    assert not os.path.exists(leaf)
    assert all(os.path.isdir(p) for p in env.rt.store.load_sandbox('sb').cgroups_paths)


def test_prune_never_touches_cgroup_dirs_it_did_not_create(env):
    """An empty cgroup dir under our parent that this state root never made (an operator's, or
    another root's) is not an orphan of ours."""
    env.sandbox('sb', boot=False)
    stray = os.path.join(env.cgroup, 'kata-unit', 'operator-made')
    os.mkdir(stray)
    result = prune_all(env)
    assert result['deleted'] == ['sb']
    assert os.path.isdir(stray)


def test_check_mode_lists_and_changes_nothing(env, monkeypatch):
    """check mode: the selection and every orphan are listed as would-be actions; files, VMs,
    cgroups and mounts are exactly as before."""
    env.sandbox('sel', labels={'x': '1'})
    env.sandbox('dead')
    env.hv.crash(env.hv.domain_name('dead'))
    env.hv.add_orphan('lost', state_root=env.rt.store.root)
    env.rt.store.set_mapping('ghost', 'nowhere')
    before = snapshot(env)
    result = prune.prune(env.rt, prune.selected_ids(env.rt, labels={'x': '1'}), force=True, check_mode=True)
    assert result['deleted'] == ['sel']
    assert {('sandbox_without_vm', 'dead'), ('vm_without_state', env.hv.domain_name('lost')),
            ('dangling_mapping', 'ghost')} <= set(kinds(result))
    assert any(a == 'would delete sandbox sel' for a in result['actions'])
    assert snapshot(env) == before


def test_prune_after_host_reboot_collects_everything(env):
    """After a reboot that wiped the state root (tmpfs) the VMs of this root are orphans;
    prune all=true leaves zero residue."""
    env.sandbox('a')
    env.container('a', 'c1')
    env.sandbox('b', boot=False)
    reboot_host(env, wipe_state=True)
    result = prune_all(env)
    assert result['failed'] == []
    assert env.residue() == {}


# ---------------------------------------------------------------------------------------------
# races

def run_in_thread(target, wait=5.0):
    """Start ``target`` in a thread and wait up to ``wait`` s; returns (thread, outcome)."""
    outcome = {}

    def work():
        try:
            outcome['result'] = target()
        except Exception as err:  # noqa: BLE001 - checked by the caller
            outcome['error'] = err

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(wait)
    return worker, outcome


@pytest.mark.parametrize('selector', [{'labels': {'tenant': 'nobody'}}, {'names': []}, {'check': True}],
                         ids=['unrelated-labels', 'orphans-only', 'check-mode'])
def test_prune_during_a_create_does_not_touch_it(env, selector):
    """Issue 8 #1: while a create boots (record 'creating', the create holds the sandbox's
    lock) an unrelated prune runs: it neither deletes nor lists the sandbox, and the create
    ends with a running sandbox."""
    seen = {}

    def prune_now(call):
        def work():
            rt = env.runtime()
            ids = prune.selected_ids(rt, labels=selector['labels']) if 'labels' in selector else []
            return prune.prune(rt, ids, force=True, check_mode=bool(selector.get('check')))
        seen['worker'], seen['outcome'] = run_in_thread(work)

    env.hv.fail('create', before=prune_now)
    env.sandbox('sb', labels={'tenant': 'acme'})
    seen['worker'].join(30)
    outcome = seen['outcome']
    assert 'error' not in outcome, outcome
    assert all(o['id'] not in ('sb', env.hv.domain_name('sb')) for o in outcome['result']['orphans_removed']), outcome
    assert outcome['result']['deleted'] == []
    assert env.hv.domain_of('sb').state == 'running'
    assert env.rt.store.load_sandbox('sb').state == 'running'
    assert all(os.path.isdir(p) for p in env.rt.store.load_sandbox('sb').cgroups_paths)
    assert truthful(env.rt, env.hv) == []


@pytest.mark.parametrize('owner', ['sandbox', 'container'])
def test_orphan_collection_between_cgroup_create_and_record_save_keeps_the_dir(env, monkeypatch, owner):
    """Issue 8 #6: orphan collection that runs after a create made its cgroup dir but before
    its record lists it must not remove the dir."""
    if owner == 'container':
        env.sandbox('sb')
    name = 'c1' if owner == 'container' else 'sb'
    method = 'save_container' if owner == 'container' else 'save_sandbox'
    real = getattr(Store, method)
    seen = {}

    def save(store, rec):
        if rec.id == name and rec.cgroups_paths and 'worker' not in seen:
            seen['worker'], seen['outcome'] = run_in_thread(lambda: prune.prune(env.runtime(), [], force=True))
        return real(store, rec)

    monkeypatch.setattr(Store, method, save)
    if owner == 'container':
        rec = env.container('sb', 'c1')
    else:
        rec = env.sandbox('sb')
    seen['worker'].join(30)
    monkeypatch.undo()
    assert 'error' not in seen['outcome'], seen['outcome']
    assert rec.cgroups_paths and all(os.path.isdir(p) for p in rec.cgroups_paths), seen['outcome']


def test_two_prunes_at_once_over_overlapping_selections(env):
    """Two prunes at once over overlapping selections: each sandbox is deleted once, nothing
    fails, and zero residue is left."""
    for sid in ('a', 'b', 'c', 'd'):
        env.sandbox(sid, labels={'half': 'one' if sid in 'ab' else 'two'})
        env.container(sid, 'c-' + sid)
    env.hv.crash(env.hv.domain_name('d'))
    results = {}
    barrier = threading.Barrier(2)

    def run(key, **selector):
        rt = env.runtime()
        ids = prune.selected_ids(rt, **selector)
        barrier.wait(10)
        results[key] = prune.prune(rt, ids, force=True, workers=2)

    workers = [threading.Thread(target=run, args=('all',), kwargs={'select_all': True}),
               threading.Thread(target=run, args=('two',), kwargs={'names': ['b', 'c', 'd']})]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert set(results) == {'all', 'two'}
    assert results['all']['failed'] == [] and results['two']['failed'] == [], results
    deleted = results['all']['deleted'] + results['two']['deleted'] + [
        o['id'] for r in results.values() for o in r['orphans_removed'] if o['kind'] == 'sandbox_without_vm']
    assert sorted(deleted) == ['a', 'b', 'c', 'd'], results
    assert env.residue() == {}


def test_prune_in_one_state_root_never_touches_another(tmp_host):
    """Issue 8 #2: two state roots share libvirt (same domain prefix) and the cgroup parent.
    prune all=true in one removes its own sandboxes and orphans only: the other root's records,
    VMs (running or shut off), containers, cgroup dirs and mounts are untouched."""
    hv = FakeHypervisor('kata-unit-')
    one = Env(tmp_host, hv=hv, name='root-one')
    two = Env(tmp_host, hv=hv, name='root-two', cgroup=one.cgroup)
    two.sandbox('b-run')
    two.container('b-run', 'b-c1')
    two.sandbox('b-stopped', boot=False)
    sbx.start(two.rt, 'b-stopped')
    sbx.stop(two.rt, 'b-stopped', force=True)  # its VM stays defined, shut off
    one.sandbox('a-run')
    one.sandbox('a-dead')
    hv.crash(hv.domain_name('a-dead'))
    hv.add_orphan('a-lost', state_root=one.rt.store.root)
    before = snapshot(two, only_mine=True)
    result = prune_all(one)
    assert result['failed'] == [], result
    assert sorted(result['deleted']) == ['a-dead', 'a-run']
    assert snapshot(two, only_mine=True) == before
    assert residue(one.rt, hv, all_domains=False, cgroup_dirs=False) == {}
    prune_all(two)
    assert one.residue() == {} and two.residue() == {}


def test_create_of_an_id_whose_vm_is_another_roots_is_refused_and_leaves_nothing(tmp_host):
    """A create in one root of an ID whose VM (same prefix) belongs to another root: refused
    naming that root, the other's VM and records untouched, nothing left in this root."""
    hv = FakeHypervisor('kata-unit-')
    one = Env(tmp_host, hv=hv, name='root-one')
    two = Env(tmp_host, hv=hv, name='root-two', cgroup=one.cgroup)
    two.sandbox('shared-id')
    before = snapshot(two, only_mine=True)
    with pytest.raises(Conflict, match='root-two'):
        one.sandbox('shared-id')
    assert snapshot(two, only_mine=True) == before
    assert hv.domain_of('shared-id').state == 'running'
    assert residue(one.rt, hv, all_domains=False, cgroup_dirs=False) == {}
