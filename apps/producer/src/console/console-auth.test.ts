import { describe, expect, it } from 'vitest';
import { checkBasicAuth } from './console-auth.js';

const basic = (s: string) => `Basic ${Buffer.from(s, 'utf8').toString('base64')}`;
const creds = { user: 'admin', password: 'pä:ss word' };

describe('checkBasicAuth', () => {
  it('accepts the configured pair, with a colon and non-ASCII in the password', () => {
    expect(checkBasicAuth(basic('admin:pä:ss word'), creds)).toBe('valid');
    expect(checkBasicAuth(basic('admin:pä:ss word').replace('Basic', 'basic'), creds)).toBe('valid');
  });

  it('refuses a wrong user, a wrong or empty password, and malformed headers', () => {
    expect(checkBasicAuth(basic('root:pä:ss word'), creds)).toBe('invalid');
    expect(checkBasicAuth(basic('admin:pä:ss wor'), creds)).toBe('invalid');
    expect(checkBasicAuth(basic('admin:'), creds)).toBe('invalid');
    expect(checkBasicAuth(basic('adminpässword'), creds)).toBe('invalid');
    expect(checkBasicAuth('Bearer abc', creds)).toBe('invalid');
    expect(checkBasicAuth('Basic ***', creds)).toBe('invalid');
  });

  it('is "none" without a header, and for everyone when no password is configured', () => {
    expect(checkBasicAuth(undefined, creds)).toBe('none');
    expect(checkBasicAuth(basic('admin:'), { user: 'admin' })).toBe('none');
    expect(checkBasicAuth(basic('admin:anything'), { user: 'admin', password: undefined })).toBe('none');
  });
});
