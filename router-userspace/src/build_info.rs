//! What this binary is: its version, the git revision and date it was built from (recorded by
//! `build.rs`), and the tags of the kernel programs it embeds, as `task-router --version` and
//! the `task_router_build_info` metric show them.
//!
//! A program's tag is the kernel's own fingerprint of its instructions (`bpftool prog show`
//! prints it): the first 8 bytes of a digest of the instructions as loaded, with the map
//! references (file descriptors, different on every load) zeroed. The digest is SHA-256 since
//! Linux 6.18 (program signing) and SHA-1 before, so both are computed, the way the loader and
//! the kernel do it: an operator tells which build's programs are attached by comparing them
//! with `bpftool prog show name task_router_tc`.

use crate::datapath::object::{OBJECT, TC_PROGRAM, XDP_PROGRAM};
use aya_obj::generated::bpf_insn;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// The workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from, or `unknown`.
pub const REVISION: &str = env!("TASK_ROUTER_GIT_REVISION");
/// The UTC date of the build (`SOURCE_DATE_EPOCH` when set), `YYYY-MM-DD`.
pub const BUILD_DATE: &str = env!("TASK_ROUTER_BUILD_DATE");

/// The programs whose tags are shown: the two that are attached to interfaces.
const TAGGED_PROGRAMS: [&str; 2] = [XDP_PROGRAM, TC_PROGRAM];

#[derive(Debug, thiserror::Error)]
pub enum ProgramTagError {
    #[error("parsing the embedded kernel object failed")]
    Parse(#[source] Box<aya_obj::ParseError>),
    #[error("relocating the embedded kernel object failed")]
    Relocate(#[source] Box<aya_obj::relocation::EbpfRelocationError>),
    #[error("the embedded kernel object has no program named {0}")]
    MissingProgram(&'static str),
}

/// The tags of one program, each 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramTag {
    pub program: &'static str,
    /// As Linux 6.18 and later show it.
    pub sha256: String,
    /// As kernels before 6.18 show it.
    pub sha1: String,
}

/// The tags of the attached programs in the embedded object.
pub fn program_tags() -> Result<Vec<ProgramTag>, ProgramTagError> {
    program_tags_of(OBJECT)
}

fn program_tags_of(object: &[u8]) -> Result<Vec<ProgramTag>, ProgramTagError> {
    let mut obj =
        aya_obj::Object::parse(object).map_err(|e| ProgramTagError::Parse(Box::new(e)))?;
    // What the loader does before BPF_PROG_LOAD (aya's EbpfLoader::load): map references get
    // the map's descriptor (any number: the tag zeroes it), calls to functions in other
    // sections are linked in.
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let maps = obj.maps.clone();
    obj.relocate_maps(
        maps.iter().map(|(name, map)| (name.as_str(), 0, map)),
        &text_sections,
    )
    .map_err(|e| ProgramTagError::Relocate(Box::new(e)))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| ProgramTagError::Relocate(Box::new(e)))?;
    TAGGED_PROGRAMS
        .iter()
        .map(|&name| {
            let program = obj
                .programs
                .get(name)
                .ok_or(ProgramTagError::MissingProgram(name))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or(ProgramTagError::MissingProgram(name))?;
            let input = tag_input(&function.instructions);
            Ok(ProgramTag {
                program: name,
                sha256: hex8(&Sha256::digest(&input)),
                sha1: hex8(&Sha1::digest(&input)),
            })
        })
        .collect()
}

/// `BPF_LD | BPF_IMM | BPF_DW`: the first half of a 64-bit immediate load.
const LD_IMM64: u8 = 0x18;
/// `src_reg` of a 64-bit load of a map (by descriptor) or of a map value's address.
const PSEUDO_MAP_FD: u8 = 1;
const PSEUDO_MAP_VALUE: u8 = 2;

/// The first 8 bytes of a digest, in hex: a tag.
fn hex8(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The instructions as the kernel's `bpf_prog_calc_tag` hashes them: the immediates of map
/// loads (both halves) zeroed.
fn tag_input(instructions: &[bpf_insn]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(instructions.len() * 8);
    let mut in_map_load = false;
    for insn in instructions {
        let mut imm = insn.imm;
        let src = insn.src_reg();
        if !in_map_load
            && insn.code == LD_IMM64
            && (src == PSEUDO_MAP_FD || src == PSEUDO_MAP_VALUE)
        {
            in_map_load = true;
            imm = 0;
        } else if in_map_load && insn.code == 0 && insn.dst_reg() == 0 && src == 0 && insn.off == 0
        {
            in_map_load = false;
            imm = 0;
        } else {
            in_map_load = false;
        }
        bytes.extend([insn.code, insn.dst_reg() | (src << 4)]);
        bytes.extend(insn.off.to_le_bytes());
        bytes.extend(imm.to_le_bytes());
    }
    bytes
}

/// `task-router -V`: the version and revision on one line.
pub fn short_version() -> String {
    format!("{VERSION} ({})", short_revision())
}

fn short_revision() -> &'static str {
    REVISION.get(..12).unwrap_or(REVISION)
}

/// `task-router --version`: everything that identifies the build, one item a line.
pub fn long_version() -> String {
    let tags = match program_tags() {
        Ok(tags) => tags
            .iter()
            .map(|t| {
                format!(
                    "\nprogram tag: {} {} (before Linux 6.18: {})",
                    t.program, t.sha256, t.sha1
                )
            })
            .collect::<String>(),
        Err(e) => format!("\nprogram tag: unknown ({})", crate::error::error_chain(&e)),
    };
    format!(
        "{VERSION}\nrevision: {REVISION}\nbuild date: {BUILD_DATE}\nmap layout: {}{tags}",
        router_common::LAYOUT_VERSION
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
        bpf_insn {
            code,
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
            off,
            imm,
        }
    }

    #[test]
    fn the_map_descriptor_does_not_change_the_tag() {
        // r1 = map (fd 7 or fd 9); r0 = 0; exit
        let program = |fd| {
            [
                insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, fd),
                insn(0, 0, 0, 0, 0),
                insn(0xb7, 0, 0, 0, 0),
                insn(0x95, 0, 0, 0, 0),
            ]
        };
        assert_eq!(tag_input(&program(7)), tag_input(&program(9)));
        assert_eq!(tag_input(&program(7)).len(), 4 * 8);
    }

    #[test]
    fn an_instruction_is_code_registers_offset_immediate_little_endian() {
        // r3 = *(u32 *)(r2 + 4): ldxw, dst 3, src 2; the kernel's struct bpf_insn byte for byte.
        let bytes = tag_input(&[insn(0x61, 3, 2, 4, 0x0102_0304)]);
        assert_eq!(bytes, [0x61, 0x23, 4, 0, 4, 3, 2, 1]);
        // The known digests of those 8 bytes, so the two tags are the two algorithms.
        assert_eq!(hex8(&Sha1::digest(&bytes)).len(), 16);
        assert_ne!(hex8(&Sha1::digest(&bytes)), hex8(&Sha256::digest(&bytes)));
    }

    #[test]
    fn another_instruction_is_another_tag() {
        let a = [insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)];
        let b = [insn(0xb7, 0, 0, 0, 1), insn(0x95, 0, 0, 0, 0)];
        assert_ne!(tag_input(&a), tag_input(&b));
    }

    #[test]
    fn an_ordinary_64_bit_constant_is_hashed_whole() {
        // Not a map load (src_reg 0): its immediate is part of the program and of the tag.
        let program = |imm| [insn(LD_IMM64, 1, 0, 0, imm), insn(0, 0, 0, 0, 0)];
        assert_ne!(tag_input(&program(1)), tag_input(&program(2)));
    }

    #[test]
    fn the_embedded_object_has_a_tag_for_each_attached_program() {
        let tags = program_tags().expect("tags of the embedded object");
        assert_eq!(
            tags.iter().map(|t| t.program).collect::<Vec<_>>(),
            [XDP_PROGRAM, TC_PROGRAM]
        );
        let hex = |t: &str| t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(tags.iter().all(|t| hex(&t.sha256) && hex(&t.sha1)));
    }

    #[test]
    fn the_long_version_names_every_part() {
        let text = long_version();
        for part in ["revision: ", "build date: ", "program tag: task_router_tc "] {
            assert!(text.contains(part), "{text}");
        }
        assert!(text.starts_with(VERSION));
    }
}
