# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's cgroup writes (guest/agent.py) with a temporary directory as the cgroup root,
and its checks of the limits and process settings a request carries."""

from __future__ import annotations

import os

import pytest
from ansible_collections.kata.runtime.plugins.module_utils.kata.guest import agent as guest


def read(path, name):
    with open(os.path.join(path, name)) as fh:
        return fh.read()


def test_create_enables_controllers_and_writes_the_limits(tmp_path):
    root = str(tmp_path)
    (tmp_path / 'cgroup.controllers').write_text('cpuset cpu io memory hugetlb pids rdma misc\n')
    path = guest.cgroup_create(root, 'c1', {'memory.max': '67108864', 'cpu.max': '25000 100000', 'cpuset.cpus': ''})
    assert path == os.path.join(root, 'kata', 'c1')
    assert read(path, 'memory.max') == '67108864' and read(path, 'cpu.max') == '25000 100000'
    assert read(path, 'cpuset.cpus') == '\n'  # empty: inherit the parent's CPUs
    # each controller enabled for the children of the root and of kata/ (one write each; the
    # temp file keeps the last)
    assert read(root, 'cgroup.subtree_control') == '+pids'
    assert read(os.path.join(root, 'kata'), 'cgroup.subtree_control') == '+pids'


def test_a_cgroup_left_by_an_earlier_container_starts_afresh(tmp_path):
    root = str(tmp_path)
    path = guest.cgroup_create(root, 'c1', {'memory.max': '1048576'})
    guest.cgroup_create(root, 'c1', {'pids.max': '5'})
    assert not os.path.exists(os.path.join(path, 'memory.max')) and read(path, 'pids.max') == '5'


def test_a_file_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / 'memory.max').mkdir()  # a directory: the write fails
    with pytest.raises(guest.RequestError, match=r"cannot set memory.max to '1' in the guest cgroup"):
        guest.cgroup_write(str(tmp_path), {'memory.max': '1'})


def test_write_order_puts_cpuset_first_and_swap_after_memory(tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(guest, '_write_file', lambda path, value: order.append(os.path.basename(path)))
    guest.cgroup_write(str(tmp_path), {'memory.swap.max': '0', 'pids.max': '1', 'memory.max': '1', 'cpuset.cpus': '0'})
    assert order == ['cpuset.cpus', 'memory.max', 'memory.swap.max', 'pids.max']


def test_read_gives_limits_and_usage(tmp_path):
    path = str(tmp_path)
    (tmp_path / 'memory.max').write_text('max\n')
    (tmp_path / 'pids.current').write_text('3\n')
    (tmp_path / 'cpu.stat').write_text('usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 9\n'
                                       'nr_throttled 4\nthrottled_usec 77\n')
    (tmp_path / 'memory.events').write_text('low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n')
    assert guest.cgroup_read(path) == {
        'memory.max': 'max', 'pids.current': '3', 'cpu.stat.usage_usec': '1500', 'cpu.stat.user_usec': '1000',
        'cpu.stat.system_usec': '500', 'cpu.stat.nr_throttled': '4', 'cpu.stat.throttled_usec': '77',
        'memory.events.oom': '1', 'memory.events.oom_kill': '1'}


def test_remove_takes_the_cgroup_away(tmp_path):
    path = guest.cgroup_create(str(tmp_path), 'c1', {'pids.max': '3'})
    assert guest.cgroup_remove(path) and not os.path.exists(path)
    assert guest.cgroup_remove(path)  # gone already: fine


@pytest.mark.parametrize('limits, named', [
    ({'cgroup.procs': '1'}, "'cgroup.procs' is not a limit file"),
    ({'../memory.max': '1'}, 'is not a limit file'),
    ({'memory.max': 1}, 'invalid value'),
    ({'memory.max': '1\n+memory'}, 'invalid value'),
    ({'memory.max': 'x' * 65}, 'invalid value'),
    ('memory.max=1', 'must be an object'),
])
def test_limits_are_checked(limits, named):
    with pytest.raises(guest.RequestError, match=named):
        guest.parse_limits(limits)


@pytest.mark.parametrize('process, named', [
    ({'no_new_privileges': 1}, 'no_new_privileges'),
    ({'capabilities': {'bounding': 1}}, 'five sets'),
    ({'capabilities': dict.fromkeys(('bounding', 'effective', 'permitted', 'inheritable', 'ambient'), -1)},
     'bit mask'),
    ({'rlimits': [[99, 1, 1]]}, 'invalid entry'),
    ({'rlimits': [[7, 1, 2 ** 64]]}, 'invalid entry'),
    ({'rlimits': [[7, True, 1]]}, 'invalid entry'),
    ({'umask': 0o1000}, 'umask'),
    ({'oom_score_adj': -1001}, 'oom_score_adj'),
    ({'additional_gids': ['wheel']}, 'additional_gids'),
    ({'domainname': 'a;cg=/x'}, 'invalid domainname'),
])
def test_process_settings_are_checked(process, named):
    with pytest.raises(guest.RequestError, match=named):
        guest.parse_process(process)


def test_exec_init_gets_the_settings_in_one_argument():
    process = guest.parse_process({
        'capabilities': {'bounding': 0x21, 'effective': 0x20, 'permitted': 0x20, 'inheritable': 0, 'ambient': 0},
        'rlimits': [[7, 10, 20], [4, 0, -1]], 'no_new_privileges': True, 'umask': 0o22, 'additional_gids': [1, 2],
        'oom_score_adj': -5, 'domainname': 'example.test'})
    extra = guest.exec_init_extra(process, '/sys/fs/cgroup/kata/c1')
    assert extra == ('cg=/sys/fs/cgroup/kata/c1;dn=example.test;oom=-5;rl=7:10:20,4:0:-1;gids=1,2;'
                     'caps=21,20,20,0,0;umask=18;nnp=1')
    assert guest.exec_init_extra(guest.parse_process(None), '') == ''
