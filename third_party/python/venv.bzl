"""A repository rule that builds the Python toolchain from the lock file.

`python_venv` creates a virtualenv with the host's Python 3.11, installs
requirements_lock.txt into it with `--require-hashes --no-deps` (every
package pinned and hash-checked, nothing resolved at install time), and
registers the venv's interpreter as a `py_runtime` toolchain. The lock
pins uv, which does the install (pip installs uv first, hash-checked, and
is the fallback). Bazel re-runs the rule only when the lock file (or this
file) changes, so a second build does not reinstall anything.

The interpreter is taken from $COATNET_PYTHON when set, else `python3.11`,
else `python3` on PATH; it must be CPython 3.11.
"""

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "python_toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)

exports_files(["venv/bin/python3"])
"""

def _find_python(rctx):
    override = rctx.os.environ.get("COATNET_PYTHON", "")
    if override:
        return rctx.path(override)
    for name in ["python3.11", "python3"]:
        found = rctx.which(name)
        if found:
            return found
    fail("No python3 on PATH. Install CPython 3.11 (Debian: apt-get install " +
         "python3 python3-venv) or point COATNET_PYTHON at one.")

def _run(rctx, argv, what, timeout = 600):
    res = rctx.execute(argv, timeout = timeout, quiet = True)
    if res.return_code != 0:
        fail("{} failed (exit {}):\n{}\n{}".format(
            what,
            res.return_code,
            res.stdout,
            res.stderr,
        ))
    return res

def _uv_requirement(lock_text):
    """The lock file's `uv==...` entry with its hash lines, or None."""
    lines = lock_text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("uv=="):
            continue
        block = [line]
        for follow in lines[i + 1:]:
            if not follow.startswith(" "):
                break
            block.append(follow)
        return "\n".join(block) + "\n"
    return None

def _pip(venv, lock):
    return [
        str(venv) + "/bin/python3",
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar=off",
        "--require-hashes",
        "--no-deps",
        "-r",
        str(lock),
    ]

def _install(rctx, venv, lock):
    """Installs the lock file into the venv, hash-checked, no resolving.

    uv (pinned in the lock itself, installed first by pip with its hashes)
    downloads in parallel: about 20 s for the whole lock against several
    minutes for pip. Where uv cannot be installed, pip installs the lock.
    """
    uv_req = _uv_requirement(rctx.read(lock))
    if uv_req:
        rctx.file("uv_requirement.txt", uv_req)
        rctx.report_progress("Installing uv from requirements_lock.txt")
        res = rctx.execute(
            _pip(venv, rctx.path("uv_requirement.txt")),
            timeout = 600,
            quiet = True,
        )
        if res.return_code == 0:
            rctx.report_progress(
                "Installing requirements_lock.txt with uv (first use only)",
            )
            _run(
                rctx,
                [
                    str(venv) + "/bin/uv",
                    "pip",
                    "install",
                    "--python",
                    str(venv) + "/bin/python3",
                    "--require-hashes",
                    "--no-deps",
                    "--compile-bytecode",
                    "-r",
                    str(lock),
                ],
                "uv pip install -r requirements_lock.txt",
                timeout = 3600,
            )
            return
        err = res.stderr.strip().splitlines()
        print("uv could not be installed ({}); installing with pip.".format(
            err[-1] if err else "exit {}".format(res.return_code),
        ))
    rctx.report_progress(
        "Installing requirements_lock.txt with pip (first use only, minutes)",
    )
    _run(
        rctx,
        _pip(venv, lock),
        "pip install -r requirements_lock.txt",
        timeout = 3600,
    )

def _python_venv_impl(rctx):
    python = _find_python(rctx)
    version = _run(
        rctx,
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        "Checking the Python version",
    ).stdout.strip()
    if version != "3.11":
        fail(("{} is Python {}, but the lock file is for 3.11. Install " +
              "Python 3.11 or set COATNET_PYTHON to one.").format(
            python,
            version,
        ))
    lock = rctx.path(rctx.attr.lock_file)
    venv = rctx.path("venv")
    rctx.report_progress("Creating the virtualenv with " + str(python))
    _run(rctx, [python, "-m", "venv", str(venv)], "python -m venv " +
                                                   "(Debian: apt-get install python3-venv)")
    _install(rctx, venv, lock)
    rctx.file("BUILD.bazel", _BUILD.format(
        interpreter = str(venv) + "/bin/python3",
    ))
    rctx.file("WORKSPACE", "workspace(name = \"{}\")\n".format(rctx.name))

python_venv = repository_rule(
    implementation = _python_venv_impl,
    attrs = {
        "lock_file": attr.label(allow_single_file = True, mandatory = True),
    },
    environ = ["COATNET_PYTHON"],
)
