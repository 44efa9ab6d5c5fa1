"""Test doubles shipped with the package: what the tests, the benchmark and `invalidatord demo`
run the daemon against instead of AWS. Nothing the daemon itself runs imports from here.

- `cloudfront`: `CloudFrontEmulator`, a faithful CloudFront invalidation API over real HTTP on
  top of moto, with fault injection (`inject`, `reject_path`, `hold`, `complete_all`).
"""
