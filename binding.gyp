{
  "variables": {
    "uffd_sanitize%": "<!(node -p \"process.env.UFFD_SANITIZE || ''\")",
    "uffd_bench%": "<!(node -p \"require('fs').existsSync('native/bench') ? 1 : 0\")"
  },
  "targets": [
    {
      "target_name": "userfaultfd",
      "sources": [
        "native/addon.cc",
        "native/fd_ops.cc",
        "native/uffd.cc",
        "native/memfd.cc",
        "native/poller.cc",
        "native/toucher.cc",
        "native/writer.cc",
        "native/fd_passing.cc",
        "native/engine.cc",
        "native/engine_napi.cc",
        "native/run_fill.cc",
        "native/resolver.cc",
        "native/watchdog.cc",
        "native/pagemap.cc",
        "native/wp_sync.cc",
        "native/snapshot.cc",
        "native/gen_writers.cc"
      ],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api"],
      "defines": ["NAPI_VERSION=8", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS!='linux'", {"type": "none"}],
        ["uffd_sanitize!=''", {
          "cflags_cc+": ["-fsanitize=<(uffd_sanitize)", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g", "-O1"],
          "ldflags+": ["-fsanitize=<(uffd_sanitize)"]
        }]
      ]
    },
    {
      "target_name": "userfaultfd_bench",
      "sources": [
        "native/bench/bench_addon.cc",
        "native/bench/floor.cc",
        "native/bench/c_reference.cc",
        "native/bench/bulk.cc",
        "native/bench/touch.cc",
        "native/bench/restore.cc"
      ],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api"],
      "defines": ["NAPI_VERSION=8", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-fvisibility=hidden", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS!='linux'", {"type": "none"}],
        ["uffd_bench==0", {"type": "none", "sources": []}]
      ]
    }
  ]
}
