//! `--chmod`: an octal mode (up to 07777) or, as BuildKit accepts since
//! dockerfile 1.14, a chmod(1)-style symbolic mode such as `u+x,go-w`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// Bits of the classes named (`u` 0o4700-ish masks); all three when none is named.
    who: u32,
    ops: Vec<(char, Perm)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perm {
    /// `rwxXst` letters.
    Letters(String),
    /// `=u`, `+g`...: copy another class's bits.
    Copy(char),
}

const U: u32 = 0o4700;
const G: u32 = 0o2070;
const O: u32 = 0o1007;

impl Chmod {
    pub fn parse(s: &str) -> Result<Self, String> {
        let numeric = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if numeric {
            return match u32::from_str_radix(s, 8) {
                Ok(m) if m <= 0o7777 => Ok(Chmod::Octal(m)),
                _ => Err(format!("invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777")),
            };
        }
        let bad = || format!("invalid chmod parameter: '{s}': expected an octal mode or a symbolic mode like u+x,go-w");
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let mut chars = part.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => U,
                    'g' => G,
                    'o' => O,
                    'a' => U | G | O,
                    _ => break,
                };
                chars.next();
            }
            if who == 0 {
                who = U | G | O;
            }
            let mut ops = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let mut letters = String::new();
                let mut copy = None;
                while let Some(&c) = chars.peek() {
                    match c {
                        'r' | 'w' | 'x' | 'X' | 's' | 't' if copy.is_none() => letters.push(c),
                        'u' | 'g' | 'o' if letters.is_empty() && copy.is_none() => copy = Some(c),
                        '+' | '-' | '=' => break,
                        _ => return Err(bad()),
                    }
                    chars.next();
                }
                ops.push((op, copy.map(Perm::Copy).unwrap_or(Perm::Letters(letters))));
            }
            if ops.is_empty() {
                return Err(bad());
            }
            clauses.push(Clause { who, ops });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The new permission bits for an entry with `mode` (0o7777 bits).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for clause in clauses {
            for (op, perm) in &clause.ops {
                let bits = match perm {
                    Perm::Letters(l) => {
                        let mut rwx = 0;
                        let mut special = 0;
                        for c in l.chars() {
                            match c {
                                'r' => rwx |= 4,
                                'w' => rwx |= 2,
                                'x' => rwx |= 1,
                                'X' if is_dir || mode & 0o111 != 0 => rwx |= 1,
                                's' => special |= 0o6000,
                                't' => special |= 0o1000,
                                _ => {}
                            }
                        }
                        ((rwx * 0o111) | special) & clause.who
                    }
                    Perm::Copy(c) => {
                        let rwx = match c {
                            'u' => (mode >> 6) & 7,
                            'g' => (mode >> 3) & 7,
                            _ => mode & 7,
                        };
                        (rwx * 0o111) & clause.who & 0o777
                    }
                };
                mode = match op {
                    '+' => mode | bits,
                    '-' => mode & !bits,
                    // `=` clears the named classes' rwx (and their special bits) first.
                    _ => (mode & !(clause.who & 0o7777)) | bits,
                };
            }
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ap(s: &str, mode: u32, dir: bool) -> u32 {
        Chmod::parse(s).unwrap().apply(mode, dir)
    }

    #[test]
    fn octal_and_symbolic() {
        assert_eq!(ap("0755", 0o600, false), 0o755);
        assert_eq!(ap("4755", 0o600, false), 0o4755);
        assert!(Chmod::parse("8").is_err() && Chmod::parse("17777").is_err());
        assert_eq!(ap("u+x", 0o644, false), 0o744);
        assert_eq!(ap("+x", 0o644, false), 0o755);
        assert_eq!(ap("go-w", 0o666, false), 0o644);
        assert_eq!(ap("a=r", 0o777, false), 0o444);
        assert_eq!(ap("u=rwx,g=rx,o=", 0o000, false), 0o750);
        assert_eq!(ap("a+X", 0o644, false), 0o644, "X only for dirs or already executable");
        assert_eq!(ap("a+X", 0o644, true), 0o755);
        assert_eq!(ap("a+X", 0o744, false), 0o755);
        assert_eq!(ap("g=u", 0o640, false), 0o660);
        assert_eq!(ap("u+s", 0o755, false), 0o4755);
        assert_eq!(ap("+t", 0o777, true), 0o1777);
        for bad in ["", "u", "u+q", "z+x", "u+x,"] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
    }
}
