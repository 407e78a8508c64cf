{
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
        "native/fd_passing.cc",
        "native/resolver.cc"
      ],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-std=c++17", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS!='linux'", {"type": "none"}]
      ]
    }
  ]
}
