# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kata_template, and the templates in kata_sandbox_info and kata_prune, through AnsibleModule
against libvirt's ``test:///default`` driver (no VM boots: a template is planted the way
template.build leaves one; a build there fails at the agent and must leave nothing)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata import mountinfo, template
from ansible_collections.kata.runtime.plugins.module_utils.kata import sandbox as sbx
from ansible_collections.kata.runtime.plugins.modules import kata_prune, kata_sandbox_info, kata_template
from ansible_collections.kata.runtime.tests.unit.plugins.modules.test_lifecycle_modules import Host, run

pytest.importorskip('libvirt')


@pytest.fixture
def host(tmp_path):
    h = Host(tmp_path)
    yield h
    for point in mountinfo.under(str(tmp_path)):
        subprocess.run(['umount', '-l', point], check=False)


def plant(host, **opts):
    """The template kata_template would build for ``opts``, as template.build leaves it."""
    settings = sbx.settings_from(host.cfg, opts)
    spec, dummy = sbx.template_spec(host.rt, settings)
    shape = template.shape_of(host.rt.hv, template.probe_spec(spec))
    rec = template.record_for(shape, shape['memory_mb'] * 2 ** 20, 4096, spec['kernel'], spec['initrd'])
    path = os.path.join(template.templates_dir(str(host.state_root)), rec['key'])
    os.makedirs(path)
    with open(os.path.join(path, 'template.json'), 'w') as f:
        json.dump(rec, f)
    with open(os.path.join(path, 'ram'), 'wb') as f:
        f.truncate(rec['sizes']['ram'])
    with open(os.path.join(path, 'state'), 'wb') as f:
        f.write(b'S' * 4096)
    return rec


def test_check_mode_plans_a_build_and_touches_nothing(capsys, host):
    out = run(capsys, kata_template, host.args(), check_mode=True, diff=True)
    assert out['changed'] is True and not out.get('failed'), out
    assert out['actions'] == ['would build template %s' % out['template']['key']]
    assert out['template']['size_bytes'] is None and out['template']['shape']['memory_mb'] == 256
    assert out['diff'] == {'before': {'state': 'absent'},
                           'after': {'state': 'present', 'key': out['template']['key'], 'created_at': None}}
    assert not os.path.exists(str(host.state_root)) and mountinfo.under(str(host.tmp)) == []


@pytest.mark.parametrize('args, words', [
    ({'memory_mb': 8}, "invalid option 'memory_mb' = 8: must be at least 64"),
    ({'vcpus': 0}, "invalid option 'vcpus' = 0: must be at least 1"),
    ({'kernel': '/nonexistent/vmlinux'}, 'kernel /nonexistent/vmlinux does not exist'),
    ({'timeout': -1}, 'timeout must be a positive number'),
])
def test_bad_input_is_refused_and_nothing_is_made(capsys, host, args, words):
    out = run(capsys, kata_template, host.args(**args))
    assert out['failed'] and words in out['msg'] and out['changed'] is False, out
    assert not os.path.exists(str(host.state_root))


def test_present_is_unchanged_when_the_template_exists_and_absent_removes_it(capsys, host):
    rec = plant(host)
    out = run(capsys, kata_template, host.args(), diff=True)
    assert out['changed'] is False and out['actions'] == [], out
    t = out['template']
    assert (t['key'], t['image_digest'], t['created_at']) == (rec['key'], rec['image_digest'], rec['created_at'])
    assert t['size_bytes'] == 256 * 2 ** 20 + 4096 and t['path'].endswith('/templates/' + rec['key'])
    # another shape is another template
    out = run(capsys, kata_template, host.args(vcpus=2), check_mode=True)
    assert out['changed'] is True and out['template']['key'] != rec['key']
    out = run(capsys, kata_template, host.args(state='absent'), check_mode=True, diff=True)
    assert out['changed'] is True and out['diff']['after'] == {'state': 'absent'}
    assert os.path.isdir(t['path'])
    out = run(capsys, kata_template, host.args(state='absent'))
    assert out['changed'] is True and out['actions'] == ['removed template %s' % rec['key']] and out['template'] == {}
    assert not os.path.exists(t['path'])
    out = run(capsys, kata_template, host.args(state='absent'))
    assert out['changed'] is False and out['actions'] == []


def test_a_build_that_fails_leaves_nothing(capsys, host):
    """On test:///default the template's domain starts but no agent ever answers: the build
    fails with the agent's error and leaves no domain, no template and no build directory."""
    if os.geteuid() != 0:
        pytest.skip('mounts the templates tmpfs: root only')
    out = run(capsys, kata_template, host.args(timeout=1, memory_mb=64))
    assert out['failed'] and 'did not answer within 1s' in out['msg'], out
    assert host.rt.hv.list_ours() == []
    tdir = template.templates_dir(str(host.state_root))
    assert mountinfo.is_mounted(tdir) and os.listdir(tdir) == []


def test_info_lists_templates_and_prune_removes_the_stale_ones(capsys, host):
    rec = plant(host)
    other = plant(host, vcpus=2)
    out = run(capsys, kata_sandbox_info, host.args())
    assert sorted(t['key'] for t in out['templates']) == sorted([rec['key'], other['key']])
    assert all(t['stale'] is None for t in out['templates'])
    with open(host.cfg.initrd, 'ab') as f:
        f.write(b'a new agent')
    out = run(capsys, kata_sandbox_info, host.args())
    assert all('image changed' in t['stale'] for t in out['templates'])
    out = run(capsys, kata_prune, host.args(names=[]), check_mode=True)
    assert sorted(o['id'] for o in out['orphans_removed']) == sorted([rec['key'], other['key']]) and out['changed']
    assert len(run(capsys, kata_sandbox_info, host.args())['templates']) == 2
    out = run(capsys, kata_prune, host.args(names=[]))
    assert out['changed'] and len([a for a in out['actions'] if a.startswith('removed stale template')]) == 2
    assert run(capsys, kata_sandbox_info, host.args())['templates'] == []
