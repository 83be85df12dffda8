# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet-wide forced deletion and garbage collection (kata_prune).

Selection (names/globs, labels, JMESPath, all) picks sandboxes to delete; orphans are what
an interrupted operation, a crashed VM or a rebooted host leaves behind:
- dead sandboxes: a record that expects a VM and libvirt runs none;
- VMs carrying our metadata with no record;
- ID mappings pointing at nothing;
- empty cgroup directories this state root created (its cgroup journal) that no record lists;
- VM templates whose image is stale (the kernel or initrd they were built from changed), and
  what an interrupted template build left in the templates tmpfs.

Only this state root's things are ever collected: records and the cgroup journal live in it,
and each VM carries the root that owns it. Whatever an operation in progress holds (its
sandbox is locked) is never an orphan.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata import select, template
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument, KataError
from ansible_collections.kata.runtime.plugins.module_utils.kata.model import SandboxState, VmState


def selected_ids(rt, names=None, labels=None, query=None, select_all=False, listing=None):
    """IDs of the sandboxes a selector picks. No selector at all is refused.

    Names and labels are matched on the records themselves; only a JMESPath query needs the
    live view (libvirt state, VMM pid, containers), so only a query pays for it. ``listing``
    is ``store.list_sandboxes()`` when the caller already has it.
    """
    if not (names or labels or query or select_all):
        raise InvalidArgument('kata_prune needs a selector: names, labels, query or all=true '
                              '(refusing to act on every sandbox implicitly)')
    records, corrupt = listing if listing is not None else rt.store.list_sandboxes()
    if select_all:
        return sorted({r.id for r in records} | {c['id'] for c in corrupt})
    picked = [r for r in records if select.name_matches(r.id, names) and select.labels_match(r.labels, labels)]
    if query:
        ids = select.ids_from_query([sbx.info(rt, r) for r in picked], query)
    else:
        ids = [r.id for r in picked]
    if names and not labels and not query:
        ids += [c['id'] for c in corrupt if select.name_matches(c['id'], names)]
    return sorted(set(ids))


def find_orphans(rt, skip=()):
    """[{'kind', 'id', 'detail'}] of what no longer belongs to a live sandbox of this state root.

    A look without locks, for reporting (check mode) and as a list of candidates: each one is
    checked again under its sandbox's lock before anything is removed (``remove_orphan``), and
    the state of an operation in progress (its sandbox locked) is never an orphan's.
    """
    out = []
    records, corrupt = rt.store.list_sandboxes()
    known = {r.id for r in records} | {c['id'] for c in corrupt}
    for rec in records:
        if rec.id in skip:
            continue
        reason = _dead_reason(rt, rec)
        if reason and not _busy(rt, rec.id):
            out.append({'kind': 'sandbox_without_vm', 'id': rec.id, 'detail': reason})
    for sid in rt.store.list_lock_ids():
        if sid not in known and sid not in skip and not os.path.lexists(rt.store.sandbox_dir(sid)) \
                and not _busy(rt, sid):
            out.append({'kind': 'sandbox_without_vm', 'id': sid,
                        'detail': 'lock file left by an interrupted delete'})
    for dom in rt.hv.list_ours():
        if dom['sandbox_id'] not in known and _collectable_vm(rt, dom) and not _busy(rt, dom['sandbox_id']) \
                and not _building(rt, dom['sandbox_id']):
            out.append({'kind': 'vm_without_state', 'id': dom['name'],
                        'detail': 'VM of sandbox %s (%s) has no record' % (dom['sandbox_id'], dom['state'])})
    corrupt_ids = {c['id'] for c in corrupt}
    for cid, sid in sorted(rt.store.list_mappings().items()):
        if sid in skip or sid in corrupt_ids:
            continue
        reason = _dangling_reason(rt, cid, sid)
        if reason and not (sid and _busy(rt, sid)):
            out.append({'kind': 'dangling_mapping', 'id': cid, 'detail': reason})
    out.extend(_orphan_cgroups(rt, skip))
    out.extend(_stale_templates(rt))
    return out


# The sandbox ID of a template being built (template.build) and the directory of its build.
_BUILD_VM_RE = re.compile(r'^template-([0-9a-f]{%d})-[0-9a-f]{6}$' % template.KEY_LENGTH)
_BUILD_DIR_RE = re.compile(r'^%s([0-9a-f]{%d}|old)-[0-9a-f]{8}$' % (re.escape(template.BUILD_PREFIX), template.KEY_LENGTH))


def _building(rt, sid):
    """True when ``sid`` names the VM of a template build in progress (its template's lock is
    held): a VM with no record, but not an orphan."""
    match = _BUILD_VM_RE.match(sid)
    return bool(match) and template.busy(rt.store.root, match.group(1))


def _stale_templates(rt):
    """Templates of this state root built from an image that changed since (no sandbox starts
    from them any more: their shape names the old image), and build directories no build in
    progress holds."""
    tdir = template.templates_dir(rt.store.root)
    if not os.path.isdir(tdir):
        return []
    out = []
    found, problems = template.list_templates(tdir)
    for tpl in found:
        why = template.is_stale(tpl)
        if why:
            out.append({'kind': 'stale_template', 'id': tpl.key, 'detail': 'template %s: %s' % (tpl.path, why)})
    for path, _why in problems:
        name = os.path.basename(path)
        match = _BUILD_DIR_RE.match(name)
        if match and (match.group(1) == 'old' or not template.busy(rt.store.root, match.group(1))):
            out.append({'kind': 'stale_template', 'id': name, 'detail': 'unfinished template build %s' % path})
    return out


def _remove_stale_template(rt, oid, trace):
    tdir = template.templates_dir(rt.store.root)
    match = _BUILD_DIR_RE.match(oid)
    key = match.group(1) if match else oid
    if key == 'old':
        path = os.path.join(tdir, oid)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
            trace.step('removed unfinished template build %s' % path)
            return True
        return False
    with template.try_lock(rt.store.root, key) as free:
        if not free:
            return False
        if match:
            path = os.path.join(tdir, oid)
            if not os.path.isdir(path) or os.path.islink(path):
                return False
            shutil.rmtree(path)
            trace.step('removed unfinished template build %s' % path)
        else:
            try:
                tpl = template.load(tdir, key)
            except KataError:
                return False  # a broken template is reported by kata_sandbox_info, not guessed at
            why = tpl and template.is_stale(tpl)
            if not why:
                return False
            template.remove(tdir, key)
            trace.step('removed stale template %s (%s)' % (key, why))
    if template.release_if_empty(rt.store.root):
        trace.step('released the templates tmpfs %s (no template left)' % tdir)
    return True


def _busy(rt, sid):
    """True when an operation holds the sandbox's lock right now."""
    with rt.store.try_lock(sid) as free:
        return not free


def _dead_reason(rt, rec):
    """Why a record (read under its lock, or as a candidate) is an orphan, or None."""
    vm = sbx.vm_state(rt, rec)
    if sbx.state_of(rec, vm) == SandboxState.DEAD or rec.state in (SandboxState.CREATING, SandboxState.DELETING):
        return 'record says %s, VM is %s' % (rec.state, vm)
    return None


def _collectable_vm(rt, dom):
    """A VM with our prefix and marker is ours to collect when it names this state root. One
    that names another is that root's; one that names none (defined before VMs carried their
    root) is collected only when it is not running: a definition holds no work, and a
    stopped sandbox of another root gets its VM defined again when it starts."""
    root = dom.get('state_root')
    if root is not None:
        return os.path.normpath(root) == rt.store.root
    return dom['state'] not in VmState.LIVE


def _dangling_reason(rt, cid, sid):
    if sid is None:
        return 'mapping file is unreadable'
    try:
        if rt.store.load_sandbox(sid) is None and not os.path.lexists(rt.store.sandbox_dir(sid)):
            return 'points to missing sandbox %s' % sid
        if cid != sid and rt.store.load_container(sid, cid) is None:
            return 'container record missing in sandbox %s' % sid
    except KataError:
        return None  # a corrupt record: the forced delete of its sandbox handles it
    return None


def _orphan_cgroups(rt, skip=()):
    """Cgroup dirs this state root created (its cgroup journal) that no record lists any more,
    that are empty and hold no process. Another root's dirs are never in our journal."""
    notes = [n for n in rt.store.list_cgroup_journal() if n['sandbox'] not in skip]
    if not notes:
        return []
    used = _used_cgroups(rt)
    out = []
    for note in notes:
        path = note['path']
        if path in used or not rt.cgroups.is_empty(path):
            continue
        if any(o['id'] == path for o in out) or _busy(rt, note['sandbox']):
            continue
        out.append({'kind': 'empty_cgroup', 'id': path,
                    'detail': 'empty cgroup created for %s, listed by no record' % note['owner']})
    return out


def _used_cgroups(rt):
    used = set()
    records, dummy = rt.store.list_sandboxes()
    for rec in records:
        used.update(rec.cgroups_paths)
        containers, dummy = rt.store.list_containers(rec.id)
        for c in containers:
            used.update(c.cgroups_paths)
    return used


def remove_orphan(rt, orphan, trace):
    """Remove one orphan after checking again, under its sandbox's lock, that it still is one.
    Returns True when something was removed; False when it turned out to be in use (an
    operation holds the lock, or the state changed since it was found)."""
    kind, oid = orphan['kind'], orphan['id']
    if kind == 'sandbox_without_vm':
        if not os.path.lexists(rt.store.sandbox_dir(oid)):
            removed = sbx.drop_leftover_lock(rt, oid)
            if removed:
                trace.step('removed the lock file of deleted sandbox %s' % oid)
            return removed
        with rt.store.try_lock(oid) as free:
            if not free:
                return False
            rec = rt.store.load_sandbox(oid)
            if rec is None or not _dead_reason(rt, rec):
                return False
            return sbx.delete(rt, oid, force=True, trace=trace)
    if kind == 'vm_without_state':
        dom = next((d for d in rt.hv.list_ours() if d['name'] == oid), None)
        if dom is None:
            return False
        sid = dom['sandbox_id']
        with rt.store.try_lock(sid) as free:
            if (not free or os.path.lexists(rt.store.sandbox_dir(sid)) or _building(rt, sid)
                    or not _collectable_vm(rt, dict(dom, state=rt.hv.state(oid)))):
                return False
            if rt.hv.state(oid) in VmState.LIVE:
                rt.hv.destroy(oid)
            rt.hv.undefine(oid)
            trace.step('removed VM %s that had no record' % oid)
            return True
    if kind == 'dangling_mapping':
        sid = rt.store.list_mappings().get(oid, '')
        if sid == '':
            return False  # gone meanwhile
        if sid is None:  # unreadable: it belongs to no sandbox we could lock
            rt.store.remove_mapping(oid)
            trace.step('removed unreadable ID mapping %s' % oid)
            return True
        with rt.store.try_lock(sid) as free:
            if not free or rt.store.get_mapping(oid) != sid or not _dangling_reason(rt, oid, sid):
                return False
            rt.store.remove_mapping(oid)
            trace.step('removed dangling ID mapping %s' % oid)
            return True
    if kind == 'stale_template':
        return _remove_stale_template(rt, oid, trace)
    if kind == 'empty_cgroup':
        notes = [n for n in rt.store.list_cgroup_journal() if n['path'] == oid]
        removed = False
        for note in notes:
            with rt.store.try_lock(note['sandbox']) as free:
                if not free:
                    return False
                if rt.collect_cgroups([note], used=_used_cgroups(rt)):
                    removed = True
        if removed:
            trace.step('removed empty cgroup %s' % oid)
        return removed
    return False


def prune(rt, ids, force=False, check_mode=False, workers=4, orphans=True):
    """Delete the sandboxes ``ids`` in parallel, then collect orphans.

    Returns {'deleted', 'orphans_removed', 'failed', 'actions', 'warnings'}. A failure of one
    item is reported in ``failed`` with its reason and does not stop the others.
    """
    result = {'deleted': [], 'orphans_removed': [], 'failed': [], 'actions': [], 'warnings': []}
    if check_mode:
        result['deleted'] = list(ids)
        result['actions'] = ['would delete sandbox %s' % i for i in ids]
        if orphans:
            result['orphans_removed'] = find_orphans(rt, skip=set(ids))
            result['actions'] += ['would remove %s %s' % (o['kind'], o['id']) for o in result['orphans_removed']]
        return result

    def one(sid):
        trace = rt.trace()
        try:
            removed = sbx.delete(rt, sid, force=force, trace=trace)
            return sid, removed, None, trace
        except KataError as err:
            return sid, False, str(err), trace

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids) or 1))) as pool:
        for sid, removed, error, trace in pool.map(one, ids):
            result['actions'].extend(trace.actions)
            result['warnings'].extend(trace.warnings)
            if error:
                result['failed'].append({'id': sid, 'reason': error})
            elif removed:
                result['deleted'].append(sid)
    if orphans:
        # Twice at most: removing a dead sandbox can leave an empty cgroup parent behind.
        for _dummy in range(2):
            try:
                found = find_orphans(rt)
            except KataError as err:
                result['failed'].append({'id': 'orphans', 'kind': 'orphan_search', 'reason': str(err)})
                break
            if not found:
                break
            removed_any = False
            for orphan in found:
                trace = rt.trace()
                try:
                    if remove_orphan(rt, orphan, trace):
                        result['orphans_removed'].append(orphan)
                        removed_any = True
                except KataError as err:
                    result['failed'].append({'id': orphan['id'], 'kind': orphan['kind'], 'reason': str(err)})
                result['actions'].extend(trace.actions)
                result['warnings'].extend(trace.warnings)
            if result['failed'] or not removed_any:
                break
    return result
