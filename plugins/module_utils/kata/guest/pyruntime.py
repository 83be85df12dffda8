# Copyright: kata.runtime contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest's minimal Python runtime: the interpreter itself finds and byte-compiles the
agent's stdlib closure; ``ldd`` names the shared libraries of the interpreter and its extension
modules."""

from __future__ import annotations

import json
import os
import re
import subprocess

from ansible_collections.kata.runtime.plugins.module_utils.kata.errors import ImageError

# Stdlib modules always shipped besides the agent's own closure: the codecs the interpreter
# needs at startup and for UTF-8 / Latin-1 / ASCII data. (All of encodings.* would add 2 MiB
# and the CJK codec extensions for nothing the agent does.)
EXTRA_STDLIB = ('encodings', 'encodings.aliases', 'encodings.utf_8', 'encodings.utf_8_sig',
                'encodings.ascii', 'encodings.latin_1', 'encodings.idna', 'encodings.raw_unicode_escape',
                'encodings.unicode_escape', 'encodings.utf_16', 'encodings.utf_32',
                # guest/exec_init.py: prctl/capset (capabilities, no_new_privs) and setrlimit
                'ctypes', 'resource')

# Modules modulefinder reaches through optional or lazy imports that the agent never uses
# (documentation, tests, TLS, asyncio, decimal, ...). Leaving them out halves the Python part.
STDLIB_EXCLUDES = (
    '_ssl', 'ssl', '_hashlib', 'pydoc', 'pydoc_data', 'doctest', 'unittest', 'asyncio', 'tkinter',
    '_tkinter', 'test', '_testcapi', '_testinternalcapi', '_testbuffer', '_testmultiphase',
    '_testimportmultiple', '_xxtestfuzz', '_ctypes_test', 'decimal', '_pydecimal', '_decimal',
    'readline', 'pdb', 'bdb', 'curses', '_curses', '_curses_panel', 'lib2to3', 'idlelib',
    'distutils', 'ensurepip', 'venv', 'sqlite3', '_sqlite3', 'dbm', '_dbm', '_gdbm',
    'xmlrpc', 'http', 'urllib', 'email', 'mailbox', 'ftplib', 'smtplib', 'imaplib', 'poplib',
    'nntplib', 'pyexpat', 'xml', '_elementtree', 'lzma', '_lzma', 'bz2', '_bz2', 'tty', 'pty',
    'getpass', 'webbrowser', 'turtle', 'turtledemo', '_osx_support', '_aix_support',
    '_bootsubprocess', 'multiprocessing', 'concurrent',
)

_PY_PROBE = r'''
import importlib.util, json, modulefinder, os, py_compile, sys, sysconfig
agent, stage = sys.argv[1], sys.argv[2]
extra = sys.argv[3].split(',') if sys.argv[3] else []
excludes = sys.argv[4].split(',') if sys.argv[4] else []
stdlib = sysconfig.get_paths()['stdlib']
path = [p for p in sys.path if os.path.isdir(p)]
mf = modulefinder.ModuleFinder(path=path, excludes=excludes)
mf.run_script(agent)
for name in extra:
    mf.import_hook(name)
files = {}
for name, mod in mf.modules.items():
    fn = mod.__file__
    if not fn or name == '__main__':
        continue
    fn = os.path.abspath(fn)
    pyc = None
    if fn.endswith('.py'):
        pyc_path = importlib.util.cache_from_source(fn)
        pyc = os.path.join(stage, pyc_path.lstrip('/'))
        py_compile.compile(fn, cfile=pyc, dfile=fn, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        pyc = [pyc_path, pyc]
    files[name] = [fn, pyc]
agent_pyc = os.path.join(stage, 'agent.pyc')
py_compile.compile(agent, cfile=agent_pyc, dfile=sys.argv[5], doraise=True,
                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
files['__main__'] = [sys.argv[5], [sys.argv[5] + 'c', agent_pyc]]
print(json.dumps({'stdlib': stdlib, 'version': '%d.%d' % sys.version_info[:2],
                  'executable': os.path.realpath(sys.executable), 'files': files,
                  'missing': sorted(mf.badmodules)}))
'''


def python_closure(python, agent_file, agent_dest, stage_dir, extra=EXTRA_STDLIB, excludes=STDLIB_EXCLUDES):
    """Run ``python`` itself to find the agent's stdlib closure and byte-compile it (the agent
    too, as the ``.pyc`` of its guest path ``agent_dest``).

    Returns the probe's dict: stdlib, version, executable, files {module: [source, [pyc dest,
    pyc staged] | None]}. The .pyc files use unchecked-hash invalidation so they stay valid in
    an archive whose mtimes are all 0.
    """
    proc = subprocess.run([python, '-I', '-S', '-c', _PY_PROBE, agent_file, stage_dir, ','.join(extra),
                           ','.join(excludes), agent_dest],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise ImageError('finding the agent\'s stdlib closure with %s failed: %s' % (
            python, proc.stderr.decode('utf-8', 'replace').strip()[-2000:]))
    return json.loads(proc.stdout.decode('utf-8'))


def ldd_closure(paths):
    """Shared libraries (and the dynamic loader) the ELF files in ``paths`` need.

    Returns {path as the loader resolves it: real file}. Static binaries need nothing.
    """
    libs = {}
    for path in paths:
        proc = subprocess.run(['ldd', path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, LC_ALL='C'), check=False)
        text = proc.stdout.decode('utf-8', 'replace')
        if proc.returncode != 0:
            if 'not a dynamic executable' in text + proc.stderr.decode('utf-8', 'replace'):
                continue
            raise ImageError('ldd %s failed: %s' % (path, proc.stderr.decode('utf-8', 'replace')))
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r'\S+\s+=>\s+(/\S+)\s+\(0x', line) or re.match(r'(/\S+)\s+\(0x', line)
            if m:
                libs[m.group(1)] = os.path.realpath(m.group(1))
            elif '=> not found' in line:
                raise ImageError('ldd %s: %s' % (path, line))
    return libs
