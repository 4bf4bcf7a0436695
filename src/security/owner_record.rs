//! The `user.rootlesscontainers` extended attribute: the owner a file would have if root's
//! chown had acted, as rootless-containers/proto defines it (a protobuf `Resource` with
//! `uint32 uid = 1; uint32 gid = 2;`). Tier 2 of root emulation writes it on the file in the
//! container's layer; `commit` keeps it with the file and `export` writes it as the tar owner.
//! No record means the file's real owner; a field of `u32::MAX` means that id is the real one.

/// The attribute's name.
pub const XATTR: &[u8] = b"user.rootlesscontainers";

/// `u32::MAX` in a field: that id is left as the file's own (chown's `-1`).
pub const KEEP: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The protobuf encoding: proto3 leaves a zero field out.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        for (tag, value) in [(0x08u8, self.uid), (0x10u8, self.gid)] {
            if value != 0 {
                out.push(tag);
                varint(&mut out, value as u64);
            }
        }
        out
    }

    /// Decodes a record; unknown fields are skipped as protobuf readers do. `None` when the
    /// bytes are not a protobuf message.
    pub fn decode(mut bytes: &[u8]) -> Option<Owner> {
        let mut owner = Owner { uid: 0, gid: 0 };
        while !bytes.is_empty() {
            let key = read_varint(&mut bytes)?;
            match (key >> 3, key & 7) {
                (field, 0) => {
                    let value = read_varint(&mut bytes)?;
                    match field {
                        1 => owner.uid = value as u32,
                        2 => owner.gid = value as u32,
                        _ => {}
                    }
                }
                (_, 1) => bytes = bytes.get(8..)?,
                (_, 2) => {
                    let len = read_varint(&mut bytes)? as usize;
                    bytes = bytes.get(len..)?;
                }
                (_, 5) => bytes = bytes.get(4..)?,
                _ => return None,
            }
        }
        Some(owner)
    }

    /// The owner a file really owned by `real` shows with this record.
    pub fn over(self, real: Owner) -> Owner {
        Owner {
            uid: if self.uid == KEEP { real.uid } else { self.uid },
            gid: if self.gid == KEEP { real.gid } else { self.gid },
        }
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_protobuf_form() {
        // uid 1000 = 0xe8 0x07 as a varint; gid 0 is left out.
        assert_eq!(Owner { uid: 1000, gid: 0 }.encode(), [0x08, 0xe8, 0x07]);
        for owner in [
            Owner { uid: 0, gid: 0 },
            Owner {
                uid: 1000,
                gid: 1000,
            },
            Owner { uid: KEEP, gid: 42 },
        ] {
            assert_eq!(Owner::decode(&owner.encode()), Some(owner));
        }
        // An unknown length-delimited field 3 is skipped.
        assert_eq!(
            Owner::decode(&[0x1a, 0x01, 0xff, 0x10, 0x05]),
            Some(Owner { uid: 0, gid: 5 })
        );
        assert_eq!(Owner::decode(&[0x08]), None);
    }

    #[test]
    fn a_kept_field_shows_the_real_id() {
        let real = Owner { uid: 0, gid: 0 };
        assert_eq!(
            Owner { uid: KEEP, gid: 7 }.over(real),
            Owner { uid: 0, gid: 7 }
        );
    }
}
