#![no_main]

#[global_allocator]
static ALLOC: wedge_fuzz_targets::CappedAlloc = wedge_fuzz_targets::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| wedge_fuzz::run("wedge_structured", data));
