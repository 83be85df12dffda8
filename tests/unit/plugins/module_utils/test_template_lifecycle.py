# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM templates wired into the sandbox lifecycle, on the fakes of our hypervisor and agent
interfaces: a sandbox that asks for a template starts as a clone when a current one of its
shape exists and boots cold otherwise; a clone that fails is destroyed and the sandbox boots
cold; deleting or pruning a clone leaves the template; prune removes stale templates.
(test_sandbox_lifecycle.py also runs the ``create_template`` flow through every fault.)"""

from __future__ import annotations

import base64
import os

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import prune, template
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import InvalidArgument
from ansible_collections.kata.runtime.plugins.module_utils.kata.options import SANDBOX_OPTIONS
from ansible_collections.kata.runtime.tests.unit.plugins.module_utils.lifecycle_fakes import (
    Env,
    build_template,
)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='share.prepare and the templates tmpfs mount: root only'),
              pytest.mark.usefixtures('quick_hooks')]


def tdir(env):
    return template.templates_dir(env.rt.store.root)


def create(env, sid, **opts):
    trace = env.rt.trace()
    sbx.create(env.rt, sid, env.settings(**opts), trace=trace)
    return env.rt.store.load_sandbox(sid), trace


def test_a_sandbox_starts_from_a_template_of_its_shape(env):
    tpl = build_template(env)
    assert env.hv.ours() == {}, 'the template VM is gone once saved'
    assert sorted(os.listdir(tpl.path)) == ['ram', 'state', 'template.json']
    rec, trace = create(env, 'sb', template=True)
    assert rec.boot == 'template' and rec.state == 'running'
    assert sbx.info(env.rt, rec)['boot'] == 'template'
    assert env.hv.count('create_clone') == 1 and env.hv.count('create') == 0
    dom = env.hv.domain_of('sb')
    assert dom.state == 'running' and dom.ram == tpl.ram and dom.cloned_from == tpl.state
    # the clone's agent reseeded, set the clock and mounted the shares before it was ready
    assert sorted(dom.post_clone['mounts']) == ['kataOutput', 'kataShared', 'kataVolumes']
    assert len(base64.b64decode(dom.post_clone['seed'])) == template.SEED_BYTES
    assert any('from template %s' % tpl.key in a for a in trace.actions), trace.actions


def test_two_clones_get_different_seeds_and_no_balloon(tmp_host):
    env = Env(tmp_host, free_page_reporting=True)
    build_template(env)
    create(env, 'a', template=True)
    create(env, 'b', template=True)
    doms = [env.hv.domain_of(s) for s in ('a', 'b')]
    assert [d.vm['free_page_reporting'] for d in doms] == [False, False], 'a clone must never get the balloon'
    assert doms[0].post_clone['seed'] != doms[1].post_clone['seed']
    # a cold sandbox on the same host keeps its balloon
    create(env, 'c')
    assert env.hv.domain_of('c').vm['free_page_reporting'] is True


@pytest.mark.parametrize('why', ['off', 'none', 'shape', 'stale'])
def test_cold_boot_when_no_current_template_fits(env, why):
    if why != 'none':
        build_template(env)
    opts = {'template': why != 'off'}
    if why == 'shape':
        opts['vcpus'] = 2
    if why == 'stale':
        with open(env.config.initrd, 'ab') as f:
            f.write(b'a new agent')
    rec, trace = create(env, 'sb', **opts)
    assert rec.boot == 'cold' and env.hv.count('create_clone') == 0 and env.hv.count('create') == 1
    if why != 'off':
        assert any('booting cold' in a for a in trace.actions), trace.actions


@pytest.mark.parametrize('fault', ['create_clone', 'resume', 'post_clone', 'ping'])
def test_a_clone_that_fails_is_destroyed_and_the_sandbox_boots_cold(env, fault):
    tpl = build_template(env)
    if fault in ('post_clone', 'ping'):
        env.agents.fail(fault, mode='hang')
    else:
        env.hv.fail(fault)
    rec, trace = create(env, 'sb', template=True)
    assert rec.boot == 'cold' and rec.state == 'running'
    assert env.hv.count('create') == 1
    failed = [a for a in trace.actions if 'booting cold' in a]
    assert failed and ('template %s' % tpl.key) in failed[0], trace.actions
    assert env.hv.domain_of('sb').vm.get('free_page_reporting') is True  # the config's (default on), cold
    assert template.load(tdir(env), tpl.key) is not None


def test_forced_delete_and_prune_of_clones_leave_the_template(env):
    tpl = build_template(env)
    create(env, 'a', template=True)
    create(env, 'b', template=True)
    env.container('a', 'c1')
    assert sbx.delete(env.rt, 'a', force=True) is True
    result = prune.prune(env.rt, ['b'], force=True)
    assert result['deleted'] == ['b'] and result['failed'] == []
    assert env.residue() == {}
    assert template.load(tdir(env), tpl.key).info() == tpl.info()


def test_a_stopped_clone_boots_again_as_a_new_clone_or_cold(env):
    tpl = build_template(env)
    create(env, 'sb', template=True)
    sbx.stop(env.rt, 'sb', force=True)
    trace = env.rt.trace()
    sbx.start(env.rt, 'sb', trace=trace)
    assert env.rt.store.load_sandbox('sb').boot == 'template' and env.hv.count('create_clone') == 2
    assert any('does not boot again by itself' in a for a in trace.actions), trace.actions
    sbx.stop(env.rt, 'sb', force=True)
    assert template.remove_locked(env.rt.store.root, tpl.key) is True
    sbx.start(env.rt, 'sb')
    assert env.rt.store.load_sandbox('sb').boot == 'cold' and env.hv.domain_of('sb').state == 'running'
    # and the wish can be turned off at start
    sbx.stop(env.rt, 'sb', force=True)
    build_template(env)
    sbx.start(env.rt, 'sb', use_template=False)
    assert env.rt.store.load_sandbox('sb').boot == 'cold'


def test_an_interrupted_clone_create_is_made_again(env):
    """A create killed after the clone started (record 'creating', boot 'template'): start
    does not trust the clone (it may not have reseeded or mounted), it makes a new one."""
    build_template(env)
    create(env, 'sb', template=True)
    rec = env.rt.store.load_sandbox('sb')
    rec.state = 'creating'
    env.rt.store.save_sandbox(rec)
    env.hv.domain_of('sb').post_clone = None
    trace = env.rt.trace()
    sbx.start(env.rt, 'sb', trace=trace)
    assert any('a clone whose create was interrupted' in a for a in trace.actions), trace.actions
    assert env.hv.domain_of('sb').post_clone is not None and env.rt.store.load_sandbox('sb').state == 'running'


def test_template_setting_is_checked_and_never_a_difference(env):
    with pytest.raises(InvalidArgument, match="template must be true or false, got 'yes'"):
        env.settings(template='yes')
    rec, dummy = create(env, 'sb', template=False)
    assert not SANDBOX_OPTIONS.compare(rec, env.settings(template=True), given=['template'])


def test_prune_removes_stale_templates_only(env):
    tpl = build_template(env)
    other = build_template(env, vcpus=2)
    with open(env.config.kernel, 'ab') as f:
        f.write(b'a new kernel')  # both templates are stale now
    fresh = build_template(env)
    assert fresh.key not in (tpl.key, other.key)
    planned = prune.prune(env.rt, [], check_mode=True)
    stale = sorted(o['id'] for o in planned['orphans_removed'] if o['kind'] == 'stale_template')
    assert stale == sorted([tpl.key, other.key])
    assert sorted(t.key for t in template.list_templates(tdir(env))[0]) == sorted([tpl.key, other.key, fresh.key])
    result = prune.prune(env.rt, [])
    assert sorted(o['id'] for o in result['orphans_removed']) == stale and result['failed'] == []
    assert len([a for a in result['actions'] if a.startswith('removed stale template')]) == 2
    assert [t.key for t in template.list_templates(tdir(env))[0]] == [fresh.key]
    assert prune.prune(env.rt, [])['orphans_removed'] == []


def test_concurrent_builds_of_one_shape_build_once(env):
    import threading
    results = []

    def one():
        spec, dummy = sbx.template_spec(env.rt, env.settings())
        results.append(template.build_locked(env.hv, env.rt.store.root, 512, spec, agent_timeout=5, settle=0.2,
                                             agent=lambda vm: env.agents.factory(vm['sandbox_id'], 5))[1])

    threads = [threading.Thread(target=one) for dummy in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert env.hv.count('create_template_vm') == 1


def test_removing_the_last_template_releases_the_tmpfs_and_no_lock_file_stays(env):
    from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo
    one = build_template(env)
    two = build_template(env, vcpus=2)
    assert mountinfo.is_mounted(tdir(env))
    assert os.listdir(os.path.join(env.rt.store.root, 'locks', template.LOCKS_DIR)) == []
    assert template.remove_locked(env.rt.store.root, one.key) is True
    assert mountinfo.is_mounted(tdir(env)), 'another template is still there'
    assert template.remove_locked(env.rt.store.root, two.key) is True
    assert not mountinfo.is_mounted(tdir(env))
    assert template.remove_locked(env.rt.store.root, two.key) is False
    assert os.listdir(os.path.join(env.rt.store.root, 'locks', template.LOCKS_DIR)) == []
    assert build_template(env).key == one.key and mountinfo.is_mounted(tdir(env))  # mounted again
