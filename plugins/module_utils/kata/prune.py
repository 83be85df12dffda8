# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet-wide forced deletion and garbage collection (kata_prune).

Selection (names/globs, labels, JMESPath, all) picks sandboxes to delete; orphans are what
an interrupted operation, a crashed VM or a rebooted host leaves behind:
- dead sandboxes: a record that expects a VM and libvirt runs none;
- VMs carrying our metadata with no record;
- ID mappings pointing at nothing;
- empty cgroup directories under our parent that no record lists.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata import select
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument, KataError


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
        return sorted({r['id'] for r in records} | {c['id'] for c in corrupt})
    picked = select.filter_items(records, names, labels) if (names or labels) else records
    if query:
        ids = select.ids_from_query([sbx.info(rt, r) for r in picked], query)
    else:
        ids = [r['id'] for r in picked]
    if names and not labels and not query:
        ids += [c['id'] for c in corrupt if select.name_matches(c['id'], names)]
    return sorted(set(ids))


def find_orphans(rt, skip=()):
    """[{'kind', 'id', 'detail'}] of what no longer belongs to a live sandbox."""
    out = []
    records, corrupt = rt.store.list_sandboxes()
    known = {r['id'] for r in records} | {c['id'] for c in corrupt}
    for rec in records:
        if rec['id'] in skip:
            continue
        vm = sbx.vm_state(rt, rec)
        if sbx.state_of(rec, vm) == 'dead' or rec.get('state') in ('creating', 'deleting'):
            out.append({'kind': 'sandbox_without_vm', 'id': rec['id'],
                        'detail': 'record says %s, VM is %s' % (rec.get('state'), vm)})
    for dom in rt.hv.list_ours():
        if dom['sandbox_id'] not in known:
            out.append({'kind': 'vm_without_state', 'id': dom['name'],
                        'detail': 'VM of sandbox %s (%s) has no record' % (dom['sandbox_id'], dom['state'])})
    for cid, sid in sorted(rt.store.list_mappings().items()):
        if sid in skip:
            continue
        if sid not in known:
            out.append({'kind': 'dangling_mapping', 'id': cid, 'detail': 'points to missing sandbox %s' % sid})
        elif cid != sid and sid not in {c['id'] for c in corrupt}:
            try:
                missing = rt.store.load_container(sid, cid) is None
            except KataError:
                missing = False
            if missing:
                out.append({'kind': 'dangling_mapping', 'id': cid,
                            'detail': 'container record missing in sandbox %s' % sid})
    out.extend(_orphan_cgroups(rt, records))
    return out


def _orphan_cgroups(rt, records):
    """Empty cgroup directories under our parent (and the parent itself) no record lists."""
    used = set()
    for rec in records:
        used.update(rec.get('cgroups_paths') or [])
        containers, dummy = rt.store.list_containers(rec['id'])
        for c in containers:
            used.update(c.get('cgroups_paths') or [])
    out = []
    for mount in rt.cgroups.mounts():
        top = os.path.join(mount, rt.cgroups.parent)
        if not os.path.isdir(top):
            continue
        for dirpath, dirnames, _filenames in os.walk(top, topdown=False):
            if any(os.path.isdir(os.path.join(dirpath, d)) for d in dirnames):
                continue  # a child survived, so this one stays too
            if dirpath in used or _has_tasks(dirpath):
                continue
            if any(u.startswith(dirpath + os.sep) for u in used):
                continue
            out.append({'kind': 'empty_cgroup', 'id': dirpath, 'detail': 'empty cgroup under %s' % top})
    return out


def _has_tasks(path):
    for name in ('cgroup.procs', 'tasks'):
        try:
            with open(os.path.join(path, name)) as f:
                if f.read().strip():
                    return True
        except OSError:
            continue
    return False


def remove_orphan(rt, orphan, trace):
    kind, oid = orphan['kind'], orphan['id']
    if kind == 'sandbox_without_vm':
        sbx.delete(rt, oid, force=True, trace=trace)
    elif kind == 'vm_without_state':
        state = rt.hv.state(oid)
        if state in ('running', 'paused'):
            rt.hv.destroy(oid)
        rt.hv.undefine(oid)
        trace.step('removed VM %s that had no record' % oid)
    elif kind == 'dangling_mapping':
        rt.store.remove_mapping(oid)
        trace.step('removed dangling ID mapping %s' % oid)
    elif kind == 'empty_cgroup':
        rt.cgroups.remove([oid])
        trace.step('removed empty cgroup %s' % oid)


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
            found = find_orphans(rt)
            if not found:
                break
            for orphan in found:
                trace = rt.trace()
                try:
                    remove_orphan(rt, orphan, trace)
                    result['orphans_removed'].append(orphan)
                except KataError as err:
                    result['failed'].append({'id': orphan['id'], 'kind': orphan['kind'], 'reason': str(err)})
                result['actions'].extend(trace.actions)
                result['warnings'].extend(trace.warnings)
            if result['failed']:
                break
    return result
