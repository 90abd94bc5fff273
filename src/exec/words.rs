//! ExecuteCommand's `command` string to an argument vector, split as a POSIX shell splits
//! words (quote removal only: no expansion, no globbing, no operators), as the SSM agent does
//! in a container before it runs the command without a shell. And the way back: quoting an
//! argument vector so that it splits into exactly those arguments again.

/// Why a command string cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the command has an unterminated {0} quote")]
    Unterminated(&'static str),
    #[error("the command has no words")]
    Empty,
}

/// Splits `command` into words: blanks (space, tab, newline) separate words; `'...'` keeps
/// everything literally; `"..."` keeps everything but `\` before `$`, `` ` ``, `"`, `\` or a
/// newline; `\` outside quotes keeps the next character (and drops a newline); `#` at the
/// start of a word starts a comment that runs to the end of the line.
pub fn split(command: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word has started (so '' is an empty word, not nothing).
    let mut in_word = false;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('$' | '`' | '"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SplitError::Unterminated("double")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated("double")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                // A trailing backslash stands for itself.
                None => {
                    in_word = true;
                    word.push('\\');
                }
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(words)
}

/// One argument quoted for [`split`] (and for a POSIX shell): as it is when it needs no
/// quoting, else in single quotes, with `'` written as `'\''`.
pub fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.chars().all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
        && !arg.starts_with('#');
    if plain { arg.to_owned() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}

/// An argument vector as one command string that [`split`] turns back into it.
pub fn join<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(|a| quote(a.as_ref())).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn quotes_group_words_as_sh_does() {
        assert_eq!(words(r#"/bin/sh -c 'echo "a b"'"#), ["/bin/sh", "-c", r#"echo "a b""#]);
        assert_eq!(words("  ls\t-l \n /tmp  "), ["ls", "-l", "/tmp"]);
        assert_eq!(words(r#"echo "a  b" 'c  d' e\ f"#), ["echo", "a  b", "c  d", "e f"]);
        assert_eq!(words(r#"echo a"b c"d'e f'g"#), ["echo", "ab cde fg"]);
        assert_eq!(words(r#"printf '' "" x"#), ["printf", "", "", "x"]);
        // No expansion: what a shell would expand stays literal.
        assert_eq!(words(r#"echo $HOME "$PATH" * ~"#), ["echo", "$HOME", "$PATH", "*", "~"]);
    }

    #[test]
    fn backslashes_follow_posix() {
        assert_eq!(words(r#"echo "a\"b" "c\\d" "e\$f" "g\h""#), ["echo", r#"a"b"#, r"c\d", "e$f", r"g\h"]);
        assert_eq!(words(r"echo 'a\b' a\\b a\'b"), ["echo", r"a\b", r"a\b", "a'b"]);
        assert_eq!(words("echo a\\\nb \"c\\\nd\""), ["echo", "ab", "cd"]);
        assert_eq!(words(r"echo end\"), ["echo", r"end\"]);
    }

    #[test]
    fn comments_start_only_at_a_word() {
        assert_eq!(words("echo a#b # the rest\necho"), ["echo", "a#b", "echo"]);
        assert_eq!(words("echo '#x' \\#y"), ["echo", "#x", "#y"]);
    }

    #[test]
    fn the_hoop_one_off_command_splits_into_three_words() {
        let cmd = r#"/bin/sh -e -c 'echo -n cHV0cyAxCg== | base64 -d | rails runner -'"#;
        assert_eq!(words(cmd), ["/bin/sh", "-e", "-c", "echo -n cHV0cyAxCg== | base64 -d | rails runner -"]);
    }

    #[test]
    fn bad_commands_are_errors() {
        assert_eq!(split("echo 'abc"), Err(SplitError::Unterminated("single")));
        assert_eq!(split(r#"echo "abc"#), Err(SplitError::Unterminated("double")));
        assert_eq!(split(r#"echo "abc\"#), Err(SplitError::Unterminated("double")));
        assert_eq!(split(""), Err(SplitError::Empty));
        assert_eq!(split(" \t\n"), Err(SplitError::Empty));
        assert_eq!(split("# only a comment"), Err(SplitError::Empty));
    }

    #[test]
    fn join_round_trips_through_split() {
        let cases: Vec<Vec<&str>> = vec![
            vec!["true"],
            vec!["sh", "-c", r#"echo "a b"; exit 3"#],
            vec!["printf", "%s\n", "it's", "", "#not a comment", "tab\there", "new\nline"],
            vec!["echo", r"back\slash", "$HOME", "`x`", "\"", "'", "''", "ünïcødé"],
        ];
        for args in cases {
            let joined = join(&args);
            assert_eq!(split(&joined).unwrap(), args, "{joined}");
        }
        assert_eq!(join(&["ls", "-l", "/tmp"]), "ls -l /tmp");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
