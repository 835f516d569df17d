"""Offline stand-in for @rules_java//java:defs.bzl: re-exports native rules.

Used only with Debian's bazel-bootstrap, which would otherwise download
rules_java; the project itself has no Java targets.
"""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_plugin = native.java_plugin
java_proto_library = native.java_proto_library
java_runtime = native.java_runtime
java_test = native.java_test
java_toolchain = native.java_toolchain
