package tlspsk

// parser reads TLS presentation-language fields from a byte slice; the first
// short read marks it failed and every later read returns zero values, so
// callers check ok once at the end.
type parser struct {
	b      []byte
	failed bool
}

func (p *parser) ok() bool    { return !p.failed }
func (p *parser) empty() bool { return len(p.b) == 0 }

func (p *parser) take(n int) []byte {
	if p.failed || n < 0 || len(p.b) < n {
		p.failed = true
		return nil
	}
	v := p.b[:n:n]
	p.b = p.b[n:]
	return v
}

func (p *parser) u8() uint8 {
	v := p.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (p *parser) u16() uint16 {
	v := p.take(2)
	if v == nil {
		return 0
	}
	return uint16(v[0])<<8 | uint16(v[1])
}

func (p *parser) u24() int {
	v := p.take(3)
	if v == nil {
		return 0
	}
	return int(v[0])<<16 | int(v[1])<<8 | int(v[2])
}

func (p *parser) u32() uint32 {
	v := p.take(4)
	if v == nil {
		return 0
	}
	return uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])
}

func (p *parser) vec8() []byte  { return p.take(int(p.u8())) }
func (p *parser) vec16() []byte { return p.take(int(p.u16())) }
func (p *parser) vec24() []byte { return p.take(p.u24()) }

// builder helpers: append length-prefixed fields.
func appendU16(b []byte, v uint16) []byte { return append(b, byte(v>>8), byte(v)) }

func appendU24(b []byte, v int) []byte { return append(b, byte(v>>16), byte(v>>8), byte(v)) }

func appendVec8(b, v []byte) []byte { return append(append(b, byte(len(v))), v...) }

func appendVec16(b, v []byte) []byte { return append(appendU16(b, uint16(len(v))), v...) }

// handshakeMsg frames body as a handshake message of type typ.
func handshakeMsg(typ uint8, body []byte) []byte {
	m := make([]byte, 0, 4+len(body))
	m = append(m, typ)
	m = appendU24(m, len(body))
	return append(m, body...)
}
